"""What every metric of the suite is made of: a float64 running mean that DDP sums exactly (`MeanMetric`), the
image-pair check, and the count of images in which a detector found no face (`MissedFaces`)."""
from __future__ import annotations

from typing import Any, Callable, List

import torch
from torch import Tensor, nn
from torchmetrics import Metric


class MeanMetric(Metric):
    """Mean of per-sample values: float64 `total` and `count`, both summed across ranks."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._frozen: List[nn.Module] = []

    def _accumulate(self, values: Tensor) -> None:
        values = values.detach().reshape(-1).to(self.total.device, torch.float64)
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        """Mean over every sample seen by every rank; NaN when there was none."""
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        return self.total / self.count

    def _hold_frozen(self, attr: str, net: Any) -> None:
        # a plain attribute, not a submodule: pretrained weights stay out of the state dict of whatever holds
        # the metric (a LightningModule's checkpoint), and one net can be shared by several metrics
        object.__setattr__(self, attr, net)
        if isinstance(net, nn.Module):
            self._frozen.append(net)

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any):
        # frozen nets follow device moves but not dtype casts (inputs are evaluated in float32); a probe
        # tensor tells which of the two `fn` does, whatever `.to` / `.cuda` / `.half` produced it
        probe = fn(torch.zeros(1))
        if isinstance(probe, Tensor):
            for net in self._frozen:
                net.to(probe.device)
        return super()._apply(fn, *args, **kwargs)


def check_images(name: str, preds: Tensor, target: Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 4 or preds.shape[1] != 3:
        raise ValueError(
            f"{name}: expects preds and target of the same shape (B, 3, H, W), got {tuple(preds.shape)} "
            f"and {tuple(target.shape)}"
        )


class MissedFaces(MeanMetric):
    """Number of images (summed over ranks) in which a face detector (dlib, mediapipe) found no face.
    update(found (B,) bool)."""

    higher_is_better = False

    def update(self, found: Tensor) -> None:
        self._accumulate((~found).double())

    def compute(self) -> Tensor:
        return self.total
