"""What multi-process training needs beyond DDP's gradient averaging: batch-wide statistics.

FOMM's official code normalises over the whole batch across GPUs (SynchronizedBatchNorm under
DataParallel); MetaPortrait's eye/mouth losses normalise by the mask area of the whole batch.

Under DDP each process would otherwise normalise over its own share of the batch, so a
run on 2 GPUs would not train the model that 1 GPU trains. torch's `SyncBatchNorm` does this on GPUs
only; `ProcessGroupBatchNorm2d` does it with any backend (gloo on CPU), so the CPU DDP tests check the
same arithmetic that a GPU cluster runs.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def distributed_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all processes (no gradient); `value` itself in a single process."""
    world = distributed_world_size()
    if world == 1:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / world


class ProcessGroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the batches of every process (same keys and
    eval behaviour as BatchNorm2d). Sums are all-reduced with autograd, so gradients flow across processes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or distributed_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        # two passes (global mean, then global squared deviations): E[x^2] - E[x]^2 in float32 loses the variance
        # of channels whose mean is large against their spread, and the processes then train another model
        xf = x.float()
        # the element count rides with the channel sums: one collective (processes may hold unequal batches)
        sums = all_reduce(torch.cat([xf.sum((0, 2, 3)), xf.new_tensor([x.numel() / x.shape[1]])]))
        count = sums[-1:]
        mean = sums[:-1] / count
        centred = xf - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum((0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        normalised = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            normalised = normalised * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return normalised.to(x.dtype)


def sync_batchnorm_(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d below `module` by a synchronised one (torch's on CUDA, ours elsewhere),
    keeping parameters and statistics. Returns `module` (changed in place where it holds the BNs)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if type(module) is nn.BatchNorm2d:
        synced = ProcessGroupBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                         module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        converted = sync_batchnorm_(child, device)
        if converted is not child:
            setattr(module, name, converted)
    return module
