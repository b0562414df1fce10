"""Multi-scale patch discriminator (pix2pix style) used by FOMM and MetaPortrait, and the small patch discriminator
of the SR stage's optional GAN loss (`PatchDiscriminator`: ours; the official SR config trains without a GAN).

State-dict layout follows the official code: `discs.<scale>.down_blocks.N.{conv,norm}` and `discs.<scale>.conv`,
with the scale written like the official `str(scale).replace(".", "-")` for the official int/float values
(1 and 1.0 -> `discs.1`, 0.5 -> `discs.0-5`). Spectral norm, when on, is the
legacy hook version (keys `weight_orig`, `weight_u`, `weight_v`), as in FOMM's vox-256 checkpoint.

Official configurations:
* MetaPortrait: scales [1], block_expansion 32, max_features 512, num_blocks 4, sn False, use_kp False.
* FOMM vox-256: block_expansion 32, sn True; vox-adv-256: sn False, use_kp True (num_kp 10, kp_variance 0.01).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from mp_lightning.networks.blocks import kp2gaussian


def scale_key(scale: Union[int, float]) -> str:
    """'1', '0.5', ... : how a pyramid scale is written in dict keys (`prediction_<key>`)."""
    return f"{float(scale):g}"


class DiscriminatorBlock(nn.Module):
    """conv k x k (no padding) [SN] -> [InstanceNorm affine] -> LeakyReLU 0.2 -> [AvgPool 2]."""

    def __init__(self, in_features: int, out_features: int, norm: bool = False, kernel_size: int = 4,
                 pool: bool = False, sn: bool = False):
        super().__init__()
        conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size)
        self.conv = nn.utils.spectral_norm(conv) if sn else conv
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        if self.pool:
            out = F.avg_pool2d(out, (2, 2))
        return out


class Discriminator(nn.Module):
    """Patch discriminator. forward(x (B, C, H, W), kp=None) -> (feature_maps list, prediction_map (B, 1, h, w)).

    With `use_kp`, Gaussian heatmaps of `kp` ((B, num_kp, 2) in [-1, 1], or FOMM's {"value": ...}) are
    concatenated to the input.
    """

    def __init__(self, num_channels: int = 3, block_expansion: int = 64, num_blocks: int = 4,
                 max_features: int = 512, sn: bool = False, use_kp: bool = False, num_kp: int = 10,
                 kp_variance: float = 0.01):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = num_channels + num_kp * int(use_kp) if i == 0 else min(max_features, block_expansion * 2 ** i)
            cout = min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(DiscriminatorBlock(cin, cout, norm=i != 0, kernel_size=4, pool=i != num_blocks - 1, sn=sn))
        self.down_blocks = nn.ModuleList(blocks)
        conv = nn.Conv2d(blocks[-1].conv.out_channels, 1, kernel_size=1)
        self.conv = nn.utils.spectral_norm(conv) if sn else conv
        self.use_kp = use_kp
        self.kp_variance = kp_variance

    def forward(self, x: torch.Tensor, kp=None) -> Tuple[List[torch.Tensor], torch.Tensor]:
        out = x
        if self.use_kp:
            if kp is None:
                raise ValueError("this discriminator was built with use_kp=True: pass kp")
            out = torch.cat([out, kp2gaussian(kp, x.shape[2:], self.kp_variance)], dim=1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


class MultiScaleDiscriminator(nn.Module):
    """One `Discriminator` per scale (`discs.<scale>`).

    forward(pyramid, kp=None): `pyramid` is a dict {"prediction_<scale>": (B, C, H_s, W_s)} as produced by
    `perceptual.ImagePyramid` (a bare tensor counts as scale 1). Returns a dict with, per scale,
    `feature_maps_<scale>` (list of block outputs, for feature matching) and `prediction_map_<scale>`
    (B, 1, h, w) raw LSGAN scores.
    """

    def __init__(self, scales: Sequence[Union[int, float]] = (1,), num_channels: int = 3, block_expansion: int = 32,
                 num_blocks: int = 4, max_features: int = 512, sn: bool = False, use_kp: bool = False,
                 num_kp: int = 10, kp_variance: float = 0.01, init: str = "official"):
        super().__init__()
        self.scales = list(scales)
        self.use_kp = use_kp
        self.discs = nn.ModuleDict({
            scale_key(s).replace(".", "-"): Discriminator(num_channels, block_expansion, num_blocks, max_features, sn,
                                                    use_kp, num_kp, kp_variance)
            for s in self.scales
        })
        if init == "official":
            self.reset_parameters()

    def reset_parameters(self, gain: float = 0.02) -> None:
        """MetaPortrait's init: Xavier-normal (gain 0.02) convs, zero biases (FOMM keeps PyTorch defaults)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight_orig if hasattr(m, "weight_orig") else m.weight, gain=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, pyramid: Union[torch.Tensor, Dict[str, torch.Tensor]], kp=None) -> Dict[str, object]:
        if isinstance(pyramid, torch.Tensor):
            if [scale_key(s) for s in self.scales] != ["1"]:
                raise ValueError("a multi-scale discriminator needs the image pyramid dict (ImagePyramid), not a tensor")
            pyramid = {"prediction_1": pyramid}
        out = {}
        for s, disc in zip(self.scales, self.discs.values()):
            key = scale_key(s)
            feature_maps, prediction_map = disc(pyramid["prediction_" + key], kp)
            out["feature_maps_" + key] = feature_maps
            out["prediction_map_" + key] = prediction_map
        return out


class PatchDiscriminator(nn.Module):
    """Small non-saturating patch discriminator for the optional GAN loss: (N, 3, H, W) in [0, 1] -> (N, 1, h, w)."""

    def __init__(self, channels: int = 32, num_downs: int = 4):
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(3, channels, 3, 1, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for _ in range(num_downs):
            nxt = min(ch * 2, channels * 8)
            layers += [nn.utils.spectral_norm(nn.Conv2d(ch, nxt, 4, 2, 1)), nn.LeakyReLU(0.2)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)
