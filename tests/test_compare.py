"""Side-by-side evaluation: one row per method, every metric, the same pairs for every method."""
from __future__ import annotations

import csv

import pytest

from mp_lightning.cli import main
from mp_lightning.config.compose import compose
from mp_lightning.stages.base import save_stage_checkpoint
from mp_lightning.runs.training import build_datamodule, build_stage
from mp_lightning.io.video import read_video
from tests.conftest import EXPERIMENTS, tiny_overrides


def _checkpoint(experiment, data, tmp_path, name):
    cfg = compose(experiment, tiny_overrides(data, tmp_path))
    return save_stage_checkpoint(build_stage(cfg, build_datamodule(cfg)), tmp_path / f"{name}.ckpt")


@pytest.mark.slow
def test_compare_writes_one_row_per_method_with_every_metric(tiny_data, tmp_path):
    warp = EXPERIMENTS / "metaportrait" / "warp_tiny.yaml"
    fomm = EXPERIMENTS / "baselines" / "fomm_tiny.yaml"
    ckpt_w = _checkpoint(warp, tiny_data, tmp_path, "warp")
    ckpt_f = _checkpoint(fomm, tiny_data, tmp_path, "fomm")
    out = tmp_path / "cmp"
    overrides = tiny_overrides(tiny_data, tmp_path)
    assert main(["compare", str(warp), str(ckpt_w), str(fomm), str(ckpt_f), *overrides, "--out", str(out),
                 "--video-frames", "4", "--wandb", "offline"]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["method"] for r in rows] == ["warp_tiny", "fomm_tiny"]
    for metric in ("test/lpips", "test/psnr", "test/ssim", "test/l1", "test/id_similarity", "test/cross/id_similarity"):
        assert all(r[metric] != "" for r in rows), metric
    frames = read_video(out / "compare.mp4")
    assert frames.shape[0] == 4 and frames.shape[2] == 4 * 64  # source | driving | 2 methods
