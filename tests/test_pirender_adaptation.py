"""PIRender as the stage of `personalize` and as Reptile's inner stage (`stage: meta`, inner_stage pirender)."""
from __future__ import annotations

import torch

from mp_lightning.config.compose import compose
from tests.conftest import EXPERIMENTS, tiny_overrides


def test_personalize_fine_tunes_pirender_on_one_clip(built_stage, tiny_data, tmp_path):
    from mp_lightning.runs.personalize import personalize
    from mp_lightning.stages.base import load_stage

    stage = built_stage("baselines/pirender_tiny.yaml", run_root=tmp_path, seed=0).stage
    before = {k: v.clone() for k, v in stage.generator.state_dict().items()}
    video = sorted((tiny_data / "test").rglob("*.mp4"))[0]
    from mp_lightning.runs.personalize import PersonalizationRecipe

    curve = personalize(stage, video, seconds=0.4, steps=3, out_dir=tmp_path / "pers", max_eval_frames=4,
                        lpips_pretrained=False, identity=False, progress=False,
                        recipe=PersonalizationRecipe(lr=1e-3, batch_size=2))
    assert curve["steps"] == [0, 1, 2, 3] and len(curve["metrics"]["l1"]) == 4
    # the EMA copy (what inference and the checkpoint use) carries the adapted weights
    tuned = load_stage(curve["checkpoint"])
    changed = [k for k, v in tuned.generator_ema.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    torch.testing.assert_close(tuned.generator_ema.state_dict(), tuned.generator.state_dict())


def test_reptile_over_pirender_fast_dev_run(tiny_data, tmp_path):
    from mp_lightning.runs.training import run_training

    cfg = compose(EXPERIMENTS / "baselines" / "pirender_meta_tiny.yaml",
                  tiny_overrides(tiny_data, tmp_path, "trainer.max_steps=2", "trainer.limit_val_batches=1",
                                 "trainer.check_val_every_n_epoch=1"))
    result = run_training(cfg)
    assert result["global_step"] == 2
