"""Learned perceptual distances to the ground truth: LPIPS (lpips package) and ST-LPIPS (stlpips-pytorch, the
`metrics` extra; its network in `networks/st_lpips.py`)."""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from mp_lightning.errors import ConfigError
from mp_lightning.metrics.base import MeanMetric, check_images
from mp_lightning.networks.st_lpips import load_st_lpips


_LPIPS_BACKBONE_WEIGHTS = {"alex": "alexnet", "vgg": "vgg16"}


def build_lpips_net(net: str = "alex", pretrained: bool = True, seed: int = 0) -> nn.Module:
    """`lpips.LPIPS` with its calibrated linear layers (they ship in the wheel).

    pretrained=True needs torchvision's ImageNet trunk (`mp_lightning.io.weights.require("alexnet"/"vgg16")`,
    a `MissingWeightsError` when absent). pretrained=False uses a random trunk seeded with `seed`, so the
    values are reproducible but are *not* LPIPS: for offline tests and smoke runs only.
    """
    import lpips

    if net not in _LPIPS_BACKBONE_WEIGHTS:
        raise ConfigError(f"metrics.lpips.net must be one of {sorted(_LPIPS_BACKBONE_WEIGHTS)}, got {net!r}")
    with warnings.catch_warnings():
        # lpips still calls torchvision with the deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        if pretrained:
            from mp_lightning.io.weights import require

            require(_LPIPS_BACKBONE_WEIGHTS[net])
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    model.requires_grad_(False)
    return model.eval()


class LPIPS(MeanMetric):
    """Mean LPIPS distance (lpips package; images in [0, 1] are mapped to [-1, 1] as it expects).

    Args: net "alex" (default, the published metric) or "vgg"; pretrained (see `build_lpips_net`); seed.
    update(preds, target): (B, 3, H, W) in [0, 1].
    """

    higher_is_better = False

    def __init__(self, net: str = "alex", pretrained: bool = True, seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.net_name = net
        self._hold_frozen("net", build_lpips_net(net, pretrained, seed))

    def update(self, preds: Tensor, target: Tensor) -> None:
        check_images("LPIPS", preds, target)
        with torch.no_grad():
            values = self.net(preds.float() * 2 - 1, target.float() * 2 - 1)
        self._accumulate(values)


def st_lpips_distances(net: nn.Module, preds: Tensor, target: Tensor) -> Tensor:
    """ST-LPIPS of each pair, (B,), for (B, 3, H, W) images in [0, 1] (`net` from `load_st_lpips`, which takes
    [-1, 1])."""
    check_images("ST-LPIPS", preds, target)
    with torch.no_grad():
        return net(preds.float() * 2 - 1, target.float() * 2 - 1).flatten()


class STLPIPS(MeanMetric):
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
        self._accumulate(st_lpips_distances(self.net, preds, target))
