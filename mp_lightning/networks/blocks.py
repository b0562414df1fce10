"""Building blocks shared by the FOMM, MetaPortrait and PIRender networks.

Everything here exists once. Attribute names (`conv`, `norm`, `SameBlock2d`, `down_blocks`, `up_blocks`,
`weight` of the anti-alias filter) are part of the official checkpoints' state-dict keys, so they must
not be renamed.

Conventions
-----------
* Coordinate grids are (H, W, 2) with the last axis ordered (x, y) and values in [-1, 1] spaced like
  `align_corners=True` (`x_i = 2 i / (W - 1) - 1`). FOMM and MetaPortrait build flows on such a grid but
  sample with `grid_sample(align_corners=False)`: `warp` keeps that mismatch, because the released
  checkpoints were trained with it.
* Hourglass upsampling is nearest x2, downsampling is 2x2 average pooling.
* Normalisation is selected with `norm=`: `"batch"` (FOMM; BatchNorm2d affine), `"instance"`
  (InstanceNorm2d affine, no running stats), `"adain"` (`ADAIN`, conditioned on a code given to
  `forward(x, cond)`), or `"none"`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

NORM_KINDS = ("batch", "instance", "adain", "none")


# ----------------------------------------------------------------------------------------------------
# grids, Gaussians, warping
# ----------------------------------------------------------------------------------------------------
def make_coordinate_grid(
    spatial_size: Sequence[int], dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Identity sampling grid (H, W, 2), last axis (x, y) in [-1, 1], align_corners=True spacing."""
    h, w = int(spatial_size[0]), int(spatial_size[1])
    x = torch.arange(w, dtype=dtype, device=device)
    y = torch.arange(h, dtype=dtype, device=device)
    # same op order as the official code (divide, double, shift) so float32 values are bit-identical
    x = 2 * (x / (w - 1)) - 1
    y = 2 * (y / (h - 1)) - 1
    xx = x.view(1, w).expand(h, w)
    yy = y.view(h, 1).expand(h, w)
    return torch.stack([xx, yy], dim=2)


def kp2gaussian(
    points: Union[torch.Tensor, dict], spatial_size: Sequence[int], kp_variance: float
) -> torch.Tensor:
    """Gaussian blob per point.

    points: (..., K, 2) in [-1, 1], (x, y); a FOMM-style dict `{"value": points}` is accepted too.
    Returns (..., K, H, W) = exp(-0.5 * |grid - p|^2 / kp_variance), unnormalised (peak 1).
    """
    mean = points["value"] if isinstance(points, dict) else points
    grid = make_coordinate_grid(spatial_size, dtype=mean.dtype, device=mean.device)
    lead = mean.dim() - 1
    grid = grid.view((1,) * lead + grid.shape)
    mean = mean.view(mean.shape[:lead] + (1, 1, 2))
    diff = grid - mean
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / kp_variance)


def resize_grid(grid: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize a sampling grid (B, h, w, 2) to (B, H, W, 2) (align_corners=False, as official)."""
    if tuple(grid.shape[1:3]) == tuple(size):
        return grid
    g = grid.permute(0, 3, 1, 2)
    g = F.interpolate(g, size=tuple(size), mode="bilinear", align_corners=False)
    return g.permute(0, 2, 3, 1)


def warp(
    image: torch.Tensor,
    grid: torch.Tensor,
    *,
    align_corners: bool = False,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Backward-warp `image` (B, C, H, W) with sampling grid `grid` (B, h, w, 2) in [-1, 1], (x, y).

    The grid is first bilinearly resized to (H, W) when its size differs (align_corners=False).
    `align_corners` and `padding_mode` go to `F.grid_sample`. Official settings: MetaPortrait
    `align_corners=False, padding_mode="reflection"`; FOMM on modern torch `align_corners=False,
    padding_mode="zeros"` (it was trained on torch 1.0 whose grid_sample behaved like True).
    """
    grid = resize_grid(grid, image.shape[2:])
    return F.grid_sample(
        image.to(grid.dtype), grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
    )


# ----------------------------------------------------------------------------------------------------
# normalisation layers
# ----------------------------------------------------------------------------------------------------
class LayerNorm2d(nn.Module):
    """Layer norm over (C, H, W) of a (B, C, H, W) map; affine params are shaped (C, 1, 1).

    The (C, 1, 1) shape is the official MetaPortrait checkpoint layout (`reger.0.weight` 512x1x1).
    """

    def __init__(self, n_out: int, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.n_out = n_out
        self.affine = affine
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(n_out, 1, 1))
            self.bias = nn.Parameter(torch.zeros(n_out, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:]
        if self.affine:
            return F.layer_norm(x, shape, self.weight.expand(shape), self.bias.expand(shape), self.eps)
        return F.layer_norm(x, shape, eps=self.eps)


class ADAIN(nn.Module):
    """Adaptive instance norm conditioned on a vector code (MetaPortrait dense-motion hourglass).

    `forward(x (B, C, H, W), code (B, D))` returns IN(x) * (1 + gamma(code)) + beta(code), where
    gamma/beta come from a 2-layer MLP (`mlp_shared` D->hidden + ReLU, `mlp_gamma`/`mlp_beta` hidden->C).
    """

    def __init__(self, norm_nc: int, feature_nc: int, hidden: int = 128):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Linear(feature_nc, hidden), nn.ReLU())
        self.mlp_gamma = nn.Linear(hidden, norm_nc)
        self.mlp_beta = nn.Linear(hidden, norm_nc)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        actv = self.mlp_shared(code.reshape(code.shape[0], -1))
        gamma = self.mlp_gamma(actv)[:, :, None, None]
        beta = self.mlp_beta(actv)[:, :, None, None]
        return normalized * (1 + gamma) + beta


def make_norm(kind: str, channels: int, cond_dim: int = 0) -> Optional[nn.Module]:
    """The normalisation layer of a block: see the module docstring for `kind`."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "adain":
        if cond_dim <= 0:
            raise ValueError("norm='adain' needs cond_dim > 0 (size of the conditioning code)")
        return ADAIN(channels, cond_dim)
    if kind == "none":
        return None
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORM_KINDS}")


def _apply_norm(norm: Optional[nn.Module], x: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
    if norm is None:
        return x
    if isinstance(norm, ADAIN):
        if cond is None:
            raise ValueError("an ADAIN block needs the conditioning code: call forward(x, cond)")
        return norm(x, cond)
    return norm(x)


class AntiAliasInterpolation2d(nn.Module):
    """Band-limited downsampling (FOMM): Gaussian blur, then keep every (1/scale)-th pixel.

    sigma = (1/scale - 1) / 2, kernel size 2*round(4 sigma) + 1, zero padding. The kernel is a persistent
    buffer `weight` (C, 1, k, k) because FOMM checkpoints store it (`down.weight`).
    Input (B, C, H, W) -> (B, C, H*scale, W*scale); scale 1 is the identity.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        kernel_size = 2 * round(sigma * 4) + 1
        self.ka = kernel_size // 2
        self.kb = self.ka - 1 if kernel_size % 2 == 0 else self.ka
        mean = (kernel_size - 1) / 2
        coords = torch.arange(kernel_size, dtype=torch.float32)
        g = torch.exp(-((coords - mean) ** 2) / (2 * max(sigma, 1e-12) ** 2))
        kernel = g[:, None] * g[None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.view(1, 1, kernel_size, kernel_size).repeat(channels, 1, 1, 1))
        self.groups = channels
        self.scale = scale
        inv = 1 / scale
        self.int_inv_scale = int(round(inv)) if abs(inv - round(inv)) < 1e-6 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        out = F.pad(x, (self.ka, self.kb, self.ka, self.kb))
        out = F.conv2d(out, weight=self.weight.to(out.dtype), groups=self.groups)
        if self.int_inv_scale:
            # identical to nearest interpolation with scale_factor=scale for integer 1/scale
            return out[:, :, :: self.int_inv_scale, :: self.int_inv_scale]
        return F.interpolate(out, scale_factor=(self.scale, self.scale))


# ----------------------------------------------------------------------------------------------------
# conv blocks
# ----------------------------------------------------------------------------------------------------
class SameBlock2d(nn.Module):
    """conv -> norm -> ReLU, same resolution. (B, in, H, W) -> (B, out, H, W)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        groups: int = 1,
        kernel_size: Union[int, Tuple[int, int]] = 3,
        padding: Union[int, Tuple[int, int]] = 1,
        norm: str = "batch",
        cond_dim: int = 0,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = make_norm(norm, out_features, cond_dim)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.relu(_apply_norm(self.norm, self.conv(x), cond))


class DownBlock2d(nn.Module):
    """conv -> norm -> ReLU -> AvgPool 2x2 [-> SameBlock2d]. (B, in, H, W) -> (B, out, H/2, W/2).

    `same_block=True` appends a `SameBlock2d` (attribute name kept for MetaPortrait's `Lwarp` keys).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Union[int, Tuple[int, int]] = 3,
        padding: Union[int, Tuple[int, int]] = 1,
        groups: int = 1,
        norm: str = "batch",
        cond_dim: int = 0,
        same_block: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = make_norm(norm, out_features, cond_dim)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))
        if same_block:
            self.SameBlock2d = SameBlock2d(
                out_features, out_features, groups, kernel_size, padding, norm=norm, cond_dim=cond_dim
            )
        else:
            self.SameBlock2d = None

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = F.relu(_apply_norm(self.norm, self.conv(x), cond))
        out = self.pool(out)
        if self.SameBlock2d is not None:
            out = self.SameBlock2d(out, cond)
        return out


class UpBlock2d(nn.Module):
    """nearest x2 -> conv -> norm -> ReLU [-> SameBlock2d]. (B, in, H, W) -> (B, out, 2H, 2W)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Union[int, Tuple[int, int]] = 3,
        padding: Union[int, Tuple[int, int]] = 1,
        groups: int = 1,
        norm: str = "batch",
        cond_dim: int = 0,
        same_block: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = make_norm(norm, out_features, cond_dim)
        if same_block:
            self.SameBlock2d = SameBlock2d(
                out_features, out_features, groups, kernel_size, padding, norm=norm, cond_dim=cond_dim
            )
        else:
            self.SameBlock2d = None

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = F.interpolate(x, scale_factor=2)
        out = F.relu(_apply_norm(self.norm, self.conv(out), cond))
        if self.SameBlock2d is not None:
            out = self.SameBlock2d(out, cond)
        return out


class ResBlock2d(nn.Module):
    """Pre-activation residual block (FOMM bottleneck): x + conv2(relu(norm2(conv1(relu(norm1(x)))))).

    Keys `conv1, conv2, norm1, norm2`. (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self,
        in_features: int,
        kernel_size: Union[int, Tuple[int, int]] = 3,
        padding: Union[int, Tuple[int, int]] = 1,
        norm: str = "batch",
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = make_norm(norm, in_features)
        self.norm2 = make_norm(norm, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(_apply_norm(self.norm1, x, None)))
        out = self.conv2(F.relu(_apply_norm(self.norm2, out, None)))
        return out + x


# ----------------------------------------------------------------------------------------------------
# hourglass
# ----------------------------------------------------------------------------------------------------
def _level_channels(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * (2 ** level))


class Encoder(nn.Module):
    """Hourglass encoder: `num_blocks` DownBlock2d, channels in -> min(max, be*2) -> ... -> min(max, be*2^n).

    `forward(x, cond)` returns the list [x, down_0(x), down_1(...), ...] (every level, input first).
    """

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        num_blocks: int = 3,
        max_features: int = 256,
        norm: str = "batch",
        cond_dim: int = 0,
        same_block: bool = False,
    ):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = in_features if i == 0 else _level_channels(block_expansion, max_features, i)
            cout = _level_channels(block_expansion, max_features, i + 1)
            blocks.append(DownBlock2d(cin, cout, 3, 1, norm=norm, cond_dim=cond_dim, same_block=same_block))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1], cond))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder with skip concatenation `[upsampled, skip]`.

    `stop_level` (MetaPortrait's `dec_lease`) drops the last up blocks: 0 decodes back to the input
    resolution and the output has `block_expansion + in_features` channels; k > 0 stops at 1/2^k of the
    input resolution with `2 * min(max, be * 2^k)` channels. `out_filters` holds that number.
    """

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        num_blocks: int = 3,
        max_features: int = 256,
        stop_level: int = 0,
        norm: str = "batch",
        cond_dim: int = 0,
        same_block: bool = False,
    ):
        super().__init__()
        blocks = []
        out_filters = in_features
        for i in reversed(range(stop_level, num_blocks)):
            cin = (1 if i == num_blocks - 1 else 2) * _level_channels(block_expansion, max_features, i + 1)
            out_filters = _level_channels(block_expansion, max_features, i)
            blocks.append(UpBlock2d(cin, out_filters, 3, 1, norm=norm, cond_dim=cond_dim, same_block=same_block))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = out_filters + in_features if stop_level == 0 else out_filters * 2

    def forward(
        self, skips: List[torch.Tensor], cond: Optional[torch.Tensor] = None, return_all: bool = False
    ):
        """skips: the Encoder's list. Returns the final map, or with `return_all` also the list
        [bottleneck, up_0 output, ..., up_{n-2} output, final concatenated map] (MetaPortrait's
        feature pyramid)."""
        skips = list(skips)
        out = skips.pop()
        out_list = [out]
        for block in self.up_blocks:
            out = block(out, cond)
            out_list.append(out)
            out = torch.cat([out, skips.pop()], dim=1)
        if return_all:
            out_list[-1] = out
            return out, out_list
        return out


class Hourglass(nn.Module):
    """Encoder + Decoder (U-Net). (B, in, H, W) -> (B, out_filters, H/2^stop_level, W/2^stop_level)."""

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        num_blocks: int = 3,
        max_features: int = 256,
        stop_level: int = 0,
        norm: str = "batch",
        cond_dim: int = 0,
        same_block: bool = False,
    ):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features, norm, cond_dim, same_block)
        self.decoder = Decoder(
            block_expansion, in_features, num_blocks, max_features, stop_level, norm, cond_dim, same_block
        )
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None, return_all: bool = False):
        return self.decoder(self.encoder(x, cond), cond, return_all=return_all)
