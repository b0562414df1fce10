"""Every training stage trains under DDP, and two processes compute the gradient one process computes.

For each tiny stage: one optimizer step on 2 gloo processes (`ddp_spawn`, per-process batch B) and one step
in one process (batch 2B) on the same fixed samples. The gradient the optimizer receives (after DDP's
reduction, before clipping) must be the one-process gradient. Rank r reads the samples r, r+2, ... in order:
the global batch holds the samples of the one-process batch.

Why gradients and not the weights after a few Adam steps: Adam's first step is lr * g / (|g| + eps), about
lr * sign(g) for every element, so a float-level difference in a near-zero gradient element becomes a
full-size step of the other sign. Weights compared after Adam steps measured that amplification, not DDP
(refine: gradients equal to 3e-6, predictions after 2 steps apart by 2e-4 against 3e-7 for a reordered batch).
"""
from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from tests.conftest import EXPERIMENTS, tiny_overrides

PER_RANK_BATCH = 2
# Relative difference |g_ddp - g_1| / |g_1| over all parameters, measured (2-core AVX-512 CPU, gloo):
# warp 1.2e-6, refine 3.4e-6, sr 9e-8, fomm_gan 3.7e-5, fomm 1.7e-4 to 7e-4 (three runs; its BatchNorms normalise
# near-constant channels of the synthetic frames, where any change in summation order is amplified), and
# 0.30 for the control whose BatchNorm statistics are per process (a real DDP fault). 1e-2 sits 14x above
# the largest float difference and 30x below the fault.
GRADIENT_TOLERANCE = 1e-2


class FixedSamples(torch.utils.data.Dataset):
    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


class RankStridedSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ... in order (Lightning's own distributed sampler shuffles training data)."""

    def __init__(self, length: int):
        self.length = length

    def _rank_world(self) -> tuple[int, int]:
        dist = torch.distributed
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)

    def __iter__(self):
        rank, world = self._rank_world()
        return iter(range(rank, self.length, world))

    def __len__(self) -> int:
        rank, world = self._rank_world()
        return len(range(rank, self.length, world))


class GradientRecorder(L.Callback):
    """Saves (rank 0) the gradients of the first optimizer step, as the optimizer receives them."""

    def __init__(self, path):
        self.path = str(path)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0 and trainer.global_rank == 0:
            torch.save({k: p.grad.detach().clone() for k, p in pl_module.named_parameters() if p.grad is not None},
                       self.path)


def _fit(stage, samples, batch_size: int, devices: int, root) -> dict:
    """One optimizer step; returns the gradients it used."""
    loader = torch.utils.data.DataLoader(FixedSamples(samples), batch_size=batch_size,
                                         sampler=RankStridedSampler(len(samples)))
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", max_steps=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
        num_sanity_val_steps=0, default_root_dir=str(root), use_distributed_sampler=False,
        callbacks=[GradientRecorder(root.with_suffix(".grads.pt"))],
    )
    trainer.fit(stage, train_dataloaders=loader)
    return torch.load(root.with_suffix(".grads.pt"))


# FOMM's equivariance losses draw random transforms per process (equal in distribution, not in value
# across process counts), so they are off here; the DDP smoke run of fomm_tiny trains them.
CASES = {
    "warp": ("metaportrait/warp_tiny.yaml", []),
    "refine": ("metaportrait/refine_tiny.yaml", []),
    "sr": ("metaportrait/sr_tiny.yaml", []),
    "fomm": ("baselines/fomm_tiny.yaml", ["model.losses.equivariance_value=0", "model.losses.equivariance_jacobian=0"]),
    "fomm_gan": ("baselines/fomm_tiny.yaml", ["model.losses.equivariance_value=0", "model.losses.equivariance_jacobian=0",
                                             "model.losses.generator_gan=1"]),
}


# the control: FOMM with per-process BatchNorm statistics must be told apart from one process
CONTROL = ("baselines/fomm_tiny.yaml", CASES["fomm"][1] + ["model.sync_batchnorm=false"])


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES) + ["control_fomm_unsynced_bn"])
def test_two_process_ddp_computes_the_one_process_gradient(case, tiny_data, tmp_path):
    from mp_lightning.config.compose import compose
    from mp_lightning.runs.training import build_datamodule, build_stage

    experiment, extra = CASES.get(case, CONTROL)
    cfg = compose(EXPERIMENTS / experiment, tiny_overrides(tiny_data, tmp_path, *extra))
    dm = build_datamodule(cfg)
    dm.setup("fit")
    samples = [dm.train_dataset[i] for i in range(2 * PER_RANK_BATCH)]  # random draws, made once
    torch.manual_seed(0)
    single = build_stage(cfg, dm)
    ddp = copy.deepcopy(single)
    start = {k: v.detach().clone() for k, v in single.named_parameters()}

    one = _fit(single, samples, 2 * PER_RANK_BATCH, 1, tmp_path / "single")
    two = _fit(ddp, samples, PER_RANK_BATCH, 2, tmp_path / "ddp")

    assert sorted(one) == sorted(two), f"{case}: the processes trained other parameters than one process"
    moved = torch.cat([(p.detach() - start[k]).flatten() for k, p in single.named_parameters()]).norm().item()
    assert moved > 1e-4, f"{case}: the step did not move the weights"
    flat_one = torch.cat([one[k].flatten() for k in sorted(one)])
    flat_two = torch.cat([two[k].flatten() for k in sorted(one)])
    difference = ((flat_two - flat_one).norm() / flat_one.norm()).item()
    print(f"{case}: relative gradient difference, 2 processes vs 1: {difference:.2e}")
    if case.startswith("control"):
        assert difference > GRADIENT_TOLERANCE, f"{case}: per-process BatchNorm went unnoticed ({difference:.2e})"
    else:
        assert difference <= GRADIENT_TOLERANCE, f"{case}: {difference:.2e} > {GRADIENT_TOLERANCE:.0e}"
