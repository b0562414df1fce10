"""Reptile's inner and outer steps over any stage that states what it adapts (`Stage.adaptation_param_groups`)
and with which loss (`Stage.adaptation_loss`): the meta-learning stage, personalization and the benchmarks
all take their steps from here.

Inner loop (one task = one person or one clip): `steps` Adam steps of the stage's own loss on the task's
support pairs from phi, the difference theta_N - phi added to a running sum, phi and the stage's floating-point
buffers (spectral-norm u/v, BatchNorm statistics) put back, so that no task sees another task's
buffers and meta-training leaves them as the initialization had them (see `TaskState`). Outer step: the pseudo-gradient
-mean(theta_N - phi) stepped by an optimizer (SGD with lr epsilon: classic Reptile; Adam with a clip: the
released code). Memory: one snapshot of phi and one running sum, no copy of the module per task.
"""
from __future__ import annotations

from typing import Sequence

import torch

from mp_lightning.batch import task_pairs


def adaptation_groups(stage, warp_lr_multiplier: float) -> list[dict]:
    """The stage's adaptation groups `{"params", "mult", "name"}`, trainable parameters only, empty groups left out."""
    groups = stage.adaptation_param_groups(warp_lr_multiplier)
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    return [g for g in groups if g["params"]]


def make_inner_optimizer(groups: list[dict], lr: float, betas: Sequence[float]) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": g["params"], "lr": lr * g["mult"]} for g in groups], betas=tuple(betas))


def clean_and_clip_(params: Sequence[torch.nn.Parameter], clip: float, limit: float = 1e5) -> None:
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=limit, neginf=-limit)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)


def adapt(stage, batch: dict, steps: int, optimizer: torch.optim.Optimizer, params: Sequence,
          clip: float = 0.3, nan_to_num: float = 1e5) -> list[float]:
    """`steps` optimizer steps of `stage.adaptation_loss` on one pairs batch; returns the losses."""
    losses = []
    for _ in range(steps):
        loss = stage.adaptation_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clean_and_clip_(params, clip, nan_to_num)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


class TaskState:
    """A snapshot of the adapted parameters and of the module's floating-point buffers, to put back after a task.

    Buffers that forward passes update in training mode (spectral-norm power-iteration vectors, BatchNorm
    running statistics) would otherwise carry one task's data into the next task and into the outer step,
    which moves only the parameters. Integer buffers (BatchNorm's batch counter) are restored too.
    """

    def __init__(self, module: torch.nn.Module, params: Sequence[torch.nn.Parameter]):
        with torch.no_grad():
            self.params = list(params)
            self.phi = [p.detach().clone() for p in self.params]
            self.buffers = [(b, b.detach().clone()) for b in module.buffers()]

    def restore(self, params: bool = True) -> None:
        with torch.no_grad():
            if params:
                for p, p0 in zip(self.params, self.phi):
                    p.copy_(p0)
            for b, b0 in self.buffers:
                b.copy_(b0)


def inner_loop(stage, groups: list[dict], batch: dict, steps: int, lr: float, betas: Sequence[float],
               clip: float = 0.3, nan_to_num: float = 1e5) -> dict:
    """Adapt `stage` to every task of an `identity_tasks` batch from phi (a fresh Adam per task, as the official
    code) and return `params`, the summed differences `delta_sum`, `num_tasks` and the inner `losses`; phi and
    the buffers are restored after each task and the gradients cleared."""
    params = [p for g in groups for p in g["params"]]
    state = TaskState(stage, params)
    with torch.no_grad():
        delta_sum = [torch.zeros_like(p) for p in params]
    losses = []
    num_tasks = batch["source"].shape[0]
    for t in range(num_tasks):
        support = task_pairs(batch, t, "support")
        opt = make_inner_optimizer(groups, lr, betas)
        losses += adapt(stage, support, steps, opt, params, clip, nan_to_num)
        with torch.no_grad():
            for p, p0, d in zip(params, state.phi, delta_sum):
                d.add_(p.detach() - p0)
        state.restore()
        del opt
    for p in params:
        p.grad = None
    return {"params": params, "delta_sum": delta_sum, "num_tasks": num_tasks, "losses": losses}


def outer_update(params: Sequence[torch.nn.Parameter], delta_sum: Sequence[torch.Tensor], num_tasks: int,
                 optimizer: torch.optim.Optimizer, grad_clip: float = 0.0, distributed: bool = True) -> torch.Tensor:
    """Apply the Reptile outer step: pseudo-gradient -mean_t(theta_N,t - phi) stepped by `optimizer`.

    params: phi (already restored); delta_sum: per parameter, the sum over this process's tasks of
    theta_N - phi; num_tasks: how many tasks that sum holds. With torch.distributed initialized (and
    `distributed`) the sums and counts of all ranks are all-reduced first, so the mean is over every
    task of every rank and each rank steps identically. Classic Reptile is `optimizer` = SGD(lr=eps)
    (phi += eps * mean delta); the official form is Adam with `grad_clip`. Returns the mean-delta norm.
    """
    flat = torch.cat([d.reshape(-1) for d in delta_sum] + [delta_sum[0].new_tensor([float(num_tasks)])])
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    count = flat[-1].item()
    if count <= 0:
        raise ValueError("outer_update: no tasks on any rank")
    offset = 0
    for p in params:
        n = p.numel()
        # the pseudo-gradient points from the adapted weights back to phi
        p.grad = (flat[offset:offset + n].view_as(p) / -count).to(p.dtype)
        offset += n
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).float()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
