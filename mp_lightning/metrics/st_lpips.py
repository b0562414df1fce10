"""ST-LPIPS as a torchmetrics metric: the mean distance over images (network in `networks/st_lpips.py`)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mp_lightning.metrics.suite import _MeanMetric, _check_images
from mp_lightning.networks.st_lpips import load_st_lpips


class STLPIPS(_MeanMetric):
    """Mean ST-LPIPS distance (stlpips-pytorch, shift-tolerant trunk; `net` "alex" (default) or "vgg").

    update(preds, target): (B, 3, H, W) in [0, 1], mapped to [-1, 1] as the package expects.
    Raises `MissingWeightsError` (with the install command) when stlpips-pytorch is absent.
    """

    higher_is_better = False

    def __init__(self, net: str = "alex", **kwargs: Any):
        super().__init__(**kwargs)
        self.net_name = net
        self._hold_frozen("net", load_st_lpips(net))

    def update(self, preds: Tensor, target: Tensor) -> None:
        _check_images("ST-LPIPS", preds, target)
        with torch.no_grad():
            values = self.net(preds.float() * 2 - 1, target.float() * 2 - 1)
        self._accumulate(values)
