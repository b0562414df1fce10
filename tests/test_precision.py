"""Gradient hygiene under mixed precision: clipping sees unscaled gradients, overflow steps are skipped.

fp16 autocast on CPU is slow, so these are a few steps of the tiny warp stage. The GradScaler path is
Lightning's own `MixedPrecision` plugin with a CPU scaler, as `trainer.precision=16-mixed` uses on GPUs.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import EXPERIMENTS, tiny_overrides


@pytest.fixture(scope="module")
def warp_setup(built_stage, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    built = built_stage("metaportrait/warp_tiny.yaml", run_root=root, seed=0)
    val = built.datamodule.val_dataset
    return built.stage, [val[i % len(val)] for i in range(2)], root


def _fit(stage, samples, root, steps=1, scaler=None):
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision

    from tests.test_ddp import FixedSamples

    plugins = [MixedPrecision("16-mixed", "cpu", scaler=scaler)] if scaler is not None else None
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0, plugins=plugins,
                        default_root_dir=str(root))
    loader = torch.utils.data.DataLoader(FixedSamples(samples), batch_size=len(samples))
    trainer.fit(stage, train_dataloaders=loader)
    return trainer


def _params(stage) -> dict:
    # parameters only: buffers (spectral-norm vectors) move in any training-mode forward
    return {k: v.detach().clone() for k, v in stage.named_parameters()}


def _max_change(before: dict, stage) -> float:
    after = _params(stage)
    return max((after[k] - v).abs().max().item() for k, v in before.items())


def test_clipping_sees_unscaled_gradients(warp_setup):
    stage, samples, root = warp_setup
    fp32, amp = copy.deepcopy(stage), copy.deepcopy(stage)
    _fit(fp32, samples, root)
    scale = 2.0 ** 12
    _fit(amp, samples, root, scaler=torch.amp.GradScaler("cpu", init_scale=scale))
    ref, seen = fp32.last_grad_norms["generator"].item(), amp.last_grad_norms["generator"].item()
    # fp16 autocast changes the gradient by a few percent; a scaled gradient would be 4096x larger
    assert 0.5 < seen / ref < 2.0, (seen, ref)
    assert amp.skipped_steps == 0


def test_overflow_step_is_skipped_and_counted(warp_setup):
    stage, samples, root = warp_setup
    amp = copy.deepcopy(stage)
    before = _params(amp)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)  # loss x scale overflows fp32
    _fit(amp, samples, root, scaler=scaler)
    assert amp.skipped_steps == 1 and amp.nonfinite_steps == 1
    assert _max_change(before, amp) == 0.0
    assert scaler.get_scale() < 2.0 ** 127  # the scaler saw the overflow and backed off


@pytest.mark.parametrize("mode", ["skip", "nan_to_num"])
def test_nonfinite_gradients_without_scaler(warp_setup, mode):
    stage, samples, root = warp_setup
    run = copy.deepcopy(stage)
    run.hp.optim.nonfinite_grads = type(run.hp.optim.nonfinite_grads)(mode)
    first = run.generator.warp_parameters()[0]
    first.register_hook(lambda g: torch.full_like(g, float("nan")))
    before = _params(run)
    _fit(run, samples, root)
    assert run.nonfinite_steps == 1
    if mode == "skip":
        assert run.skipped_steps == 1 and _max_change(before, run) == 0.0
    else:  # the released code's fp32 behaviour: NaN -> 0, the step goes on
        assert run.skipped_steps == 0 and _max_change(before, run) > 0
        assert all(torch.isfinite(p).all() for p in run.parameters())


def test_meta_stage_refuses_fp16_mixed(tiny_data, tmp_path):
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision

    from mp_lightning.config.compose import compose
    from mp_lightning.errors import ConfigError
    from mp_lightning.runs.training import build_datamodule, build_stage

    cfg = compose(EXPERIMENTS / "metaportrait" / "meta_tiny.yaml", tiny_overrides(tiny_data, tmp_path))
    stage = build_stage(cfg, build_datamodule(cfg))
    # on CPU Lightning turns the `16-mixed` flag into bf16; the plugin is what a GPU run gets
    stage.trainer = L.Trainer(accelerator="cpu", logger=False, plugins=[
        MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))])
    with pytest.raises(ConfigError, match="bf16-mixed"):
        stage.setup("fit")
