"""PIRender under plain DDP (no find_unused_parameters): 2 gloo processes (`ddp_spawn`, 2 pairs each) compute the
gradient that 1 process computes on the same 4 pairs, in the warp-only phase (the editing net outside the graph) and
in the full phase, and every trainable parameter gets one.

Measured when written (2-core CPU, 1 thread, two runs with different sample draws): total relative difference
2.5e-6 .. 7.7e-5, worst single parameter 7e-6 .. 1.2e-3 (warp phase) and 3.0e-3 (full phase, an AdaIN beta
weight), over parameters with a gradient norm above 1e-4; the biases of convolutions followed by an
instance norm have a zero gradient in exact arithmetic (float noise, 1e-9 .. 1e-7) and are left out.

Not checked here: equal weights after several steps (tests/test_ddp.py's check). For PIRender that check
differs by 6-8% of the update while reordering the batch differs by 0.02-0.3%, although the gradients agree as
above; see the issue-16 report.
"""
from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from tests.conftest import EXPERIMENTS, tiny_overrides
from tests.test_ddp import FixedSamples, RankStridedSampler

TOL = 2e-2  # relative, per parameter: >= 6x the measured float spread; a wrong reduction (sum for mean, a lost rank) is >= 0.5
MIN_NORM = 1e-4


class FirstStepGradients(L.Callback):
    """Writes rank 0's gradients before the first optimizer step to `path`."""

    def __init__(self, path):
        self.path = str(path)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0 and trainer.global_rank == 0:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            trainable = sorted(n for n, p in pl_module.named_parameters() if p.requires_grad)
            torch.save({"grads": grads, "trainable": trainable}, self.path)


def _first_step(stage, samples, batch_size, devices, root):
    loader = torch.utils.data.DataLoader(FixedSamples(samples), batch_size=batch_size,
                                         sampler=RankStridedSampler(len(samples)))
    path = root / "grads.pt"
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(root), use_distributed_sampler=False,
                        callbacks=[FirstStepGradients(path)])
    trainer.fit(stage, train_dataloaders=loader)
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("warp_steps", [1, 0], ids=["warp_phase", "full_phase"])
def test_two_processes_compute_the_one_process_gradient(tiny_data, tmp_path, warp_steps):
    from mp_lightning.config.compose import compose
    from mp_lightning.runs.training import build_datamodule, build_stage

    cfg = compose(EXPERIMENTS / "baselines" / "pirender_tiny.yaml",
                  tiny_overrides(tiny_data, tmp_path, f"model.warp_steps={warp_steps}"))
    dm = build_datamodule(cfg)
    dm.setup("fit")
    samples = [dm.train_dataset[i] for i in range(4)]
    torch.manual_seed(0)
    single = build_stage(cfg, dm)
    ddp = copy.deepcopy(single)
    (tmp_path / "single").mkdir()
    (tmp_path / "ddp").mkdir()
    one = _first_step(single, samples, 4, 1, tmp_path / "single")
    two = _first_step(ddp, samples, 2, 2, tmp_path / "ddp")
    # every trainable parameter has a gradient under DDP (the editing net's are zero in the warp phase)
    assert sorted(two["grads"]) == one["trainable"] == sorted(one["grads"])
    editing = [n for n in one["grads"] if ".editing_net." in n]
    assert editing and all((one["grads"][n].abs().max() == 0) == (warp_steps > 0) for n in editing)
    diffs = {name: float((two["grads"][name] - g).norm() / g.norm()) for name, g in one["grads"].items()
             if g.norm() > MIN_NORM}
    worst = max(diffs, key=diffs.get)
    total = float(torch.cat([(two["grads"][n] - one["grads"][n]).flatten() for n in diffs]).norm()
                  / torch.cat([one["grads"][n].flatten() for n in diffs]).norm())
    print(f"warp_steps={warp_steps}: relative gradient difference: total {total:.1e}, worst {diffs[worst]:.1e} ({worst})")
    assert diffs[worst] < TOL and total < TOL / 10
