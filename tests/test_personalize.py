"""`mp-lightning personalize`: checkpoint, curve and plot written; the held-out error falls."""
from __future__ import annotations

import json

import pytest
import torch

from mp_lightning.runs.personalize import step_schedule


def test_step_schedule():
    assert step_schedule(50) == [0, 1, 2, 5, 10, 20, 50]
    assert step_schedule(7, every=3) == [0, 1, 2, 3, 5, 6, 7]
    assert step_schedule(0) == [0]


@pytest.mark.slow
def test_personalize_cli_writes_outputs_and_improves(built_stage, tiny_data, tmp_path):
    from mp_lightning.cli import main
    from mp_lightning.stages.base import load_stage

    built = built_stage("metaportrait/warp_tiny.yaml", "model.perceptual.scales=[1.0]", run_root=tmp_path, seed=0)
    stage, ckpt = built.stage, built.save(tmp_path / "init.ckpt")
    video = sorted((tiny_data / "test").rglob("*.mp4"))[0]
    out = tmp_path / "pers"
    # the default lr (2e-4): over seeds 0-2 on AVX-512 the step-12 held-out L1 is <= 0.77x step 0's; the
    # 3e-3 used before is 1.26x (measured over an lr x seed grid of this setup; recipe choice: issue 14)
    code = main(["personalize", "--checkpoint", str(ckpt), "--video", str(video), "--seconds", "0.4",
                 "--steps", "12", "--batch-size", "2", "--max-eval-frames", "4",
                 "--lpips-pretrained", "false", "--identity-pretrained", "false", "--out", str(out), "--device", "cpu"])
    assert code == 0
    curve = json.loads((out / "curve.json").read_text())
    assert curve["steps"] == [0, 1, 2, 5, 10, 12]
    assert (out / "curve.png").stat().st_size > 1000
    for name in ("lpips_random", "psnr", "ssim", "l1", "id_similarity_random"):
        assert len(curve["metrics"][name]) == len(curve["steps"])
    assert curve["metrics"]["l1"][-1] < curve["metrics"]["l1"][0], curve["metrics"]["l1"]
    assert curve["train_seconds"] == sorted(curve["train_seconds"])
    tuned = load_stage(out / "personalized.ckpt")
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), stage.state_dict().values()))
