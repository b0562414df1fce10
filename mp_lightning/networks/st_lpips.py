"""ST-LPIPS (Ghildyal & Liu, ECCV 2022): LPIPS on anti-aliased, shift-tolerant ImageNet trunks.

stlpips-pytorch ships the trunks and the calibrated linear layers in its wheel, so this is a published,
learned perceptual metric that works offline (unlike `lpips`, whose trunk torchvision downloads). Values
are not comparable with LPIPS numbers. Its modules import `IPython` and `torchsummary` without declaring
them; both are stood in for during the import (`mp_lightning.networks.optional_imports.stand_in_modules`), never installed.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import nn

from mp_lightning.networks.optional_imports import INSTALL_HINT, stand_in_modules

NETS = ("alex", "vgg")
VARIANT = "shift_tolerant"


@functools.lru_cache(maxsize=1)
def st_lpips_unavailable_reason() -> Optional[str]:
    """Why ST-LPIPS cannot run here (None when it can)."""
    try:
        _import_stlpips()
    except ImportError as err:
        return f"st_lpips skipped: stlpips-pytorch is not importable ({err}); {INSTALL_HINT}"
    return None


def _import_stlpips():
    with stand_in_modules({"IPython": ("embed",), "torchsummary": ("summary",)}):
        from stlpips_pytorch import stlpips
    return stlpips


def load_st_lpips(net: str = "alex") -> nn.Module:
    """`stlpips.LPIPS(net, variant='shift_tolerant')` with trunk and linear layers from the wheel, frozen,
    in eval mode. forward(a, b) takes images in [-1, 1] and returns (B, 1, 1, 1) distances.

    The package loads its file with `strict=False`; here every parameter and buffer must come from the
    file, so a changed wheel cannot silently leave part of the trunk random.
    """
    if net not in NETS:
        from mp_lightning.errors import ConfigError

        raise ConfigError(f"metrics.st_lpips.net must be one of {list(NETS)}, got {net!r}")
    reason = st_lpips_unavailable_reason()
    if reason is not None:
        from mp_lightning.errors import MissingWeightsError

        raise MissingWeightsError(reason)
    stlpips = _import_stlpips()
    model = stlpips.LPIPS(net=net, variant=VARIANT, pretrained=True, verbose=False)
    path = weights_path(net)
    state = torch.load(path, map_location="cpu", weights_only=True)
    # named_* list a tensor once (the package registers its linear layers twice, as lin0.. and lins.0..)
    expected = [k for k, _ in (*model.named_parameters(), *model.named_buffers())]
    missing = [k for k in expected if k not in state]
    if missing:
        from mp_lightning.errors import CheckpointError

        raise CheckpointError(f"{path} does not hold every ST-LPIPS {net} weight: missing {missing[:4]}")
    model.requires_grad_(False)
    return model.eval()


def weights_path(net: str) -> str:
    """The ST-LPIPS file (trunk + linear layers) inside the installed wheel."""
    stlpips = _import_stlpips()
    return os.path.join(os.path.dirname(stlpips.__file__), "weights", "vST0.0", f"{net}_{VARIANT}.pth")



class StLpipsVgg16Features(nn.Module):
    """The ST-LPIPS VGG16 trunk (ImageNet-trained, anti-aliased) as a frozen perceptual feature extractor.

    forward(x (B, 3, H, W) in [0, 1]) -> 5 maps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3), after the
    input scaling LPIPS applies (images in [-1, 1], then its per-channel shift and scale). Gradients flow
    to `x`; the module stays frozen and in eval mode whatever its parent does.
    """

    def __init__(self):
        super().__init__()
        lpips_vgg = load_st_lpips("vgg")
        self.scaling = lpips_vgg.scaling_layer
        self.trunk = lpips_vgg.net
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x):
        # unit-normalised over channels at every position, as LPIPS compares them
        return [f / (f.pow(2).sum(1, keepdim=True) + 1e-10).sqrt() for f in self.trunk(self.scaling(x * 2 - 1))]
