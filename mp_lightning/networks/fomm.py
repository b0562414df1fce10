"""First Order Motion Model (Siarohin et al., NeurIPS 2019, arXiv 2003.00196): the vox-256 networks.

Three plain `nn.Module`s whose state-dict keys are one to one with the official checkpoint
(`../shared/reference/fomm/*.tsv`):

* `KPDetector`: image (B, 3, H, W) in [0, 1] -> `{"value": (B, K, 2) in [-1, 1] (x, y),
  "jacobian": (B, K, 2, 2)}`.
* `DenseMotionNetwork`: source image + two keypoint dicts -> dense backward flow at the motion
  resolution, per-motion softmax masks and an occlusion map.
* `OcclusionAwareGenerator`: source image + keypoint dicts -> `prediction` (B, 3, H, W) in [0, 1].

The discriminator lives in `mp_lightning.networks.discriminator` (shared with MetaPortrait);
`build_fomm_discriminator` builds it with FOMM's options.

`grid_sample` convention (BASELINES.md 1.4): coordinate grids are built with align_corners=True
spacing, but the official code calls `grid_sample` without `align_corners`. FOMM was trained on torch
1.0, where that meant True; on torch >= 1.3 it means False. Every module here takes `align_corners`
(default True: the training-time behaviour and an exact identity warp for the identity grid); the
golden data made with a modern torch needs False. `set_align_corners(module, value)` switches a built
network in place. The flag is not in the state dict.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mp_lightning.networks.blocks import (
    AntiAliasInterpolation2d,
    DownBlock2d,
    Hourglass,
    ResBlock2d,
    SameBlock2d,
    UpBlock2d,
    kp2gaussian,
    make_coordinate_grid,
    warp,
)

KPDict = Dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------
@dataclass
class FOMMNetConfig:
    """Network sizes; defaults are the official `config/vox-256.yaml`."""

    num_kp: int = 10  # keypoints K
    num_channels: int = 3  # image channels
    estimate_jacobian: bool = True  # first-order (affine) local motions; False = zeroth order
    # keypoint detector
    kp_temperature: float = 0.1  # softmax temperature of the keypoint heatmaps
    kp_block_expansion: int = 32
    kp_max_features: int = 1024
    kp_num_blocks: int = 5
    kp_scale_factor: float = 0.25  # detector runs on the image downsampled by this factor
    kp_single_jacobian_map: bool = False  # one jacobian map shared by all keypoints
    kp_head_padding: int = 0  # 0 = official valid 7x7 heads (58x58 maps at 64x64 features)
    # generator
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    num_bottleneck_blocks: int = 6
    estimate_occlusion_map: bool = True
    # dense motion network (inside the generator)
    dm_block_expansion: int = 64
    dm_max_features: int = 1024
    dm_num_blocks: int = 5
    dm_scale_factor: float = 0.25
    kp_variance: float = 0.01  # variance of the keypoint Gaussians (heatmap representation)
    # discriminator (vox-256 checkpoints one with spectral norm; vox-adv uses keypoint heatmaps, no SN)
    disc_scales: List[float] = field(default_factory=lambda: [1.0])
    disc_block_expansion: int = 32
    disc_max_features: int = 512
    disc_num_blocks: int = 4
    disc_sn: bool = True
    disc_use_kp: bool = False
    # grid_sample convention: True = how the official model was trained (torch 1.0); False = the
    # official code run on torch >= 1.3 (the golden data)
    align_corners: bool = True

    @classmethod
    def vox256(cls) -> "FOMMNetConfig":
        return cls()

    @classmethod
    def vox_adv256(cls) -> "FOMMNetConfig":
        """`config/vox-adv-256.yaml`: same generator/detector, discriminator on images + kp heatmaps."""
        return cls(disc_sn=False, disc_use_kp=True)

    @classmethod
    def tiny(cls, **overrides) -> "FOMMNetConfig":
        """A CPU-test size for 64x64 images (a few thousand times cheaper than vox-256)."""
        base = cls(
            num_kp=4,
            kp_block_expansion=8,
            kp_max_features=32,
            kp_num_blocks=3,
            kp_scale_factor=0.5,
            block_expansion=8,
            max_features=32,
            num_down_blocks=2,
            num_bottleneck_blocks=1,
            dm_block_expansion=8,
            dm_max_features=32,
            dm_num_blocks=3,
            dm_scale_factor=0.5,
            disc_block_expansion=8,
            disc_max_features=32,
            disc_num_blocks=3,
        )
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def set_align_corners(module: nn.Module, value: bool) -> nn.Module:
    """Switch the grid_sample convention of every FOMM module inside `module` (in place); returns it."""
    for m in module.modules():
        if hasattr(m, "align_corners") and isinstance(getattr(m, "align_corners"), bool):
            m.align_corners = bool(value)
    return module


def heatmap_to_keypoints(heatmap: torch.Tensor) -> torch.Tensor:
    """Expected coordinate of normalised heatmaps (B, K, h, w) -> (B, K, 2) in [-1, 1], (x, y)."""
    grid = make_coordinate_grid(heatmap.shape[2:], dtype=heatmap.dtype, device=heatmap.device)
    return (heatmap.unsqueeze(-1) * grid[None, None]).sum(dim=(2, 3))


# ----------------------------------------------------------------------------------------------------
# keypoint detector
# ----------------------------------------------------------------------------------------------------
class KPDetector(nn.Module):
    """Unsupervised keypoints with local jacobians (paper Sec. 3.1).

    Input (B, C, H, W) in [0, 1]; output `{"value": (B, K, 2), "jacobian": (B, K, 2, 2)}` (jacobian only
    when `estimate_jacobian`). Keypoints are soft-argmax positions in [-1, 1] of the valid region of the
    heads; each jacobian is the heatmap-weighted sum of 4 regressed maps, row-major [[a, b], [c, d]].
    """

    def __init__(
        self,
        block_expansion: int = 32,
        num_kp: int = 10,
        num_channels: int = 3,
        max_features: int = 1024,
        num_blocks: int = 5,
        temperature: float = 0.1,
        estimate_jacobian: bool = True,
        scale_factor: float = 0.25,
        single_jacobian_map: bool = False,
        pad: int = 0,
    ):
        super().__init__()
        self.num_kp = num_kp
        self.temperature = temperature
        self.scale_factor = scale_factor
        self.predictor = Hourglass(
            block_expansion, in_features=num_channels, max_features=max_features, num_blocks=num_blocks
        )
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=7, padding=pad)
        if estimate_jacobian:
            self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
            self.jacobian = nn.Conv2d(
                self.predictor.out_filters, 4 * self.num_jacobian_maps, kernel_size=7, padding=pad
            )
            # start from identity jacobians (official init), so early training is zeroth order
            with torch.no_grad():
                self.jacobian.weight.zero_()
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(self.num_jacobian_maps))
        else:
            self.jacobian = None
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    @classmethod
    def from_config(cls, cfg: FOMMNetConfig) -> "KPDetector":
        return cls(
            block_expansion=cfg.kp_block_expansion,
            num_kp=cfg.num_kp,
            num_channels=cfg.num_channels,
            max_features=cfg.kp_max_features,
            num_blocks=cfg.kp_num_blocks,
            temperature=cfg.kp_temperature,
            estimate_jacobian=cfg.estimate_jacobian,
            scale_factor=cfg.kp_scale_factor,
            single_jacobian_map=cfg.kp_single_jacobian_map,
            pad=cfg.kp_head_padding,
        )

    def forward(self, x: torch.Tensor) -> KPDict:
        if self.scale_factor != 1:
            x = self.down(x)
        features = self.predictor(x)
        logits = self.kp(features)
        b, k, h, w = logits.shape
        heatmap = F.softmax(logits.view(b, k, -1) / self.temperature, dim=2).view(b, k, h, w)
        out = {"value": heatmap_to_keypoints(heatmap)}
        if self.jacobian is not None:
            maps = self.jacobian(features).view(b, self.num_jacobian_maps, 4, h, w)
            jac = (heatmap.unsqueeze(2) * maps).view(b, k, 4, -1).sum(-1)
            out["jacobian"] = jac.view(b, k, 2, 2)
        return out


# ----------------------------------------------------------------------------------------------------
# dense motion
# ----------------------------------------------------------------------------------------------------
class DenseMotionNetwork(nn.Module):
    """Combines K local first-order motions (+ background identity) into one dense flow (paper Sec. 3.2).

    forward(source_image (B, C, H, W) in [0, 1], kp_driving, kp_source) returns
    * `sparse_deformed` (B, K+1, C, h, w): the downsampled source warped by each motion,
    * `mask` (B, K+1, h, w): softmax over motions,
    * `deformation` (B, h, w, 2): backward sampling grid in [-1, 1] (x, y),
    * `occlusion_map` (B, 1, h, w) in (0, 1) when `estimate_occlusion_map`,
    with (h, w) = (H, W) * scale_factor.
    """

    def __init__(
        self,
        block_expansion: int = 64,
        num_blocks: int = 5,
        max_features: int = 1024,
        num_kp: int = 10,
        num_channels: int = 3,
        estimate_occlusion_map: bool = True,
        scale_factor: float = 0.25,
        kp_variance: float = 0.01,
        align_corners: bool = True,
    ):
        super().__init__()
        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        self.align_corners = align_corners
        self.hourglass = Hourglass(
            block_expansion,
            in_features=(num_kp + 1) * (num_channels + 1),
            max_features=max_features,
            num_blocks=num_blocks,
        )
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=3)
        else:
            self.occlusion = None
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def heatmap_representation(self, spatial_size, kp_driving: KPDict, kp_source: KPDict) -> torch.Tensor:
        """(B, K+1, 1, h, w): driving minus source Gaussians, with a zero background map first."""
        heat = kp2gaussian(kp_driving["value"], spatial_size, self.kp_variance) - kp2gaussian(
            kp_source["value"], spatial_size, self.kp_variance
        )
        zeros = heat.new_zeros(heat.shape[0], 1, *heat.shape[2:])
        return torch.cat([zeros, heat], dim=1).unsqueeze(2)

    @staticmethod
    def sparse_motions(spatial_size, kp_driving: KPDict, kp_source: KPDict) -> torch.Tensor:
        """(B, K+1, h, w, 2) grids T_k(z) = kp_src + J_src J_drv^-1 (z - kp_drv) (paper Eq. 4); k=0 identity."""
        drv = kp_driving["value"]
        b, k = drv.shape[:2]
        h, w = int(spatial_size[0]), int(spatial_size[1])
        identity = make_coordinate_grid((h, w), dtype=drv.dtype, device=drv.device).view(1, 1, h, w, 2)
        coords = identity - drv.view(b, k, 1, 1, 2)
        if "jacobian" in kp_driving and kp_driving.get("jacobian") is not None:
            # inv_ex: torch.inverse's kernel without its singularity check (a host sync on every forward)
            jac = torch.matmul(kp_source["jacobian"], torch.linalg.inv_ex(kp_driving["jacobian"]).inverse)
            coords = torch.einsum("bkij,bkhwj->bkhwi", jac, coords)
        to_source = coords + kp_source["value"].view(b, k, 1, 1, 2)
        return torch.cat([identity.expand(b, 1, h, w, 2), to_source], dim=1)

    def deform_source(self, source: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
        """source (B, C, h, w) warped by each of the motions (B, M, h, w, 2) -> (B, M, C, h, w)."""
        b, m, h, w, _ = motions.shape
        rep = source.unsqueeze(1).expand(b, m, *source.shape[1:]).reshape(b * m, -1, h, w)
        out = F.grid_sample(rep, motions.reshape(b * m, h, w, 2), align_corners=self.align_corners)
        return out.view(b, m, -1, h, w)

    def forward(self, source_image: torch.Tensor, kp_driving: KPDict, kp_source: KPDict) -> Dict[str, torch.Tensor]:
        if self.scale_factor != 1:
            source_image = self.down(source_image)
        b, _, h, w = source_image.shape
        heat = self.heatmap_representation((h, w), kp_driving, kp_source)
        motions = self.sparse_motions((h, w), kp_driving, kp_source)
        deformed = self.deform_source(source_image, motions)
        out = {"sparse_deformed": deformed}
        # channel order per motion is [heatmap, RGB], motions k-major: the official hourglass input
        hg_in = torch.cat([heat, deformed], dim=2).view(b, -1, h, w)
        features = self.hourglass(hg_in)
        mask = F.softmax(self.mask(features), dim=1)
        out["mask"] = mask
        out["deformation"] = (motions * mask.unsqueeze(-1)).sum(dim=1)
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(features))
        return out


# ----------------------------------------------------------------------------------------------------
# generator
# ----------------------------------------------------------------------------------------------------
class OcclusionAwareGenerator(nn.Module):
    """Encoder -> warp by the dense motion -> occlusion mask -> residual bottleneck -> decoder (Sec. 3.3).

    forward(source_image (B, C, H, W) in [0, 1], kp_driving, kp_source) returns the dense-motion
    outputs `mask`, `sparse_deformed`, `occlusion_map` (B, 1, h, w), plus `deformation` (B, h, w, 2),
    `deformed` (B, C, H, W) (the source warped by the upsampled flow) and `prediction` (B, C, H, W) in [0, 1].
    """

    def __init__(
        self,
        num_channels: int = 3,
        num_kp: int = 10,
        block_expansion: int = 64,
        max_features: int = 512,
        num_down_blocks: int = 2,
        num_bottleneck_blocks: int = 6,
        estimate_occlusion_map: bool = True,
        dense_motion_params: Optional[dict] = None,
        estimate_jacobian: bool = True,
        align_corners: bool = True,
    ):
        super().__init__()
        self.align_corners = align_corners
        if dense_motion_params is not None:
            self.dense_motion_network = DenseMotionNetwork(
                num_kp=num_kp,
                num_channels=num_channels,
                estimate_occlusion_map=estimate_occlusion_map,
                align_corners=align_corners,
                **dense_motion_params,
            )
        else:
            self.dense_motion_network = None
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=(7, 7), padding=(3, 3))

        def ch(level: int) -> int:
            return min(max_features, block_expansion * (2 ** level))

        self.down_blocks = nn.ModuleList(
            [DownBlock2d(ch(i), ch(i + 1), kernel_size=(3, 3), padding=(1, 1)) for i in range(num_down_blocks)]
        )
        self.up_blocks = nn.ModuleList(
            [
                UpBlock2d(ch(num_down_blocks - i), ch(num_down_blocks - i - 1), kernel_size=(3, 3), padding=(1, 1))
                for i in range(num_down_blocks)
            ]
        )
        self.bottleneck = nn.Sequential()
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(ch(num_down_blocks), kernel_size=(3, 3), padding=(1, 1)))
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=(7, 7), padding=(3, 3))
        self.num_channels = num_channels

    @classmethod
    def from_config(cls, cfg: FOMMNetConfig) -> "OcclusionAwareGenerator":
        return cls(
            num_channels=cfg.num_channels,
            num_kp=cfg.num_kp,
            block_expansion=cfg.block_expansion,
            max_features=cfg.max_features,
            num_down_blocks=cfg.num_down_blocks,
            num_bottleneck_blocks=cfg.num_bottleneck_blocks,
            estimate_occlusion_map=cfg.estimate_occlusion_map,
            dense_motion_params=dict(
                block_expansion=cfg.dm_block_expansion,
                max_features=cfg.dm_max_features,
                num_blocks=cfg.dm_num_blocks,
                scale_factor=cfg.dm_scale_factor,
                kp_variance=cfg.kp_variance,
            ),
            estimate_jacobian=cfg.estimate_jacobian,
            align_corners=cfg.align_corners,
        )

    def forward(self, source_image: torch.Tensor, kp_driving: KPDict, kp_source: KPDict) -> Dict[str, torch.Tensor]:
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        result: Dict[str, torch.Tensor] = {}
        if self.dense_motion_network is not None:
            motion = self.dense_motion_network(source_image=source_image, kp_driving=kp_driving, kp_source=kp_source)
            result["mask"] = motion["mask"]
            result["sparse_deformed"] = motion["sparse_deformed"]
            deformation = motion["deformation"]
            result["deformation"] = deformation
            out = warp(out, deformation, align_corners=self.align_corners)
            occlusion = motion.get("occlusion_map")
            if occlusion is not None:
                result["occlusion_map"] = occlusion
                if occlusion.shape[2:] != out.shape[2:]:
                    occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear", align_corners=False)
                out = out * occlusion
            result["deformed"] = warp(source_image, deformation, align_corners=self.align_corners)
        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        result["prediction"] = torch.sigmoid(self.final(out))
        return result


# ----------------------------------------------------------------------------------------------------
# discriminator (shared module) and builders
# ----------------------------------------------------------------------------------------------------
def build_fomm_discriminator(cfg: FOMMNetConfig) -> nn.Module:
    """FOMM's multi-scale patch discriminator (keys `discs.<scale>.*`), from the shared discriminator module.

    forward(pyramid dict {"prediction_<scale>": (B, C, H, W)}, kp=None) -> dict with
    `feature_maps_<scale>` and `prediction_map_<scale>`; with `disc_use_kp` the keypoint heatmaps
    of `kp["value"]` are appended to the image channels.
    """
    from mp_lightning.networks.discriminator import MultiScaleDiscriminator

    # integral scales as ints: the official key of scale 1 is `discs.1`, not `discs.1-0`
    scales = [int(s) if float(s).is_integer() else float(s) for s in cfg.disc_scales]
    return MultiScaleDiscriminator(
        scales=scales,
        num_channels=cfg.num_channels,
        block_expansion=cfg.disc_block_expansion,
        max_features=cfg.disc_max_features,
        num_blocks=cfg.disc_num_blocks,
        sn=cfg.disc_sn,
        use_kp=cfg.disc_use_kp,
        num_kp=cfg.num_kp,
        kp_variance=cfg.kp_variance,
        init="pytorch",  # FOMM keeps PyTorch's default init (MetaPortrait re-initialises)
    )


def build_fomm(cfg: Optional[FOMMNetConfig] = None, discriminator: bool = True):
    """(kp_detector, generator, discriminator or None) for `cfg` (default vox-256)."""
    cfg = cfg or FOMMNetConfig()
    kp = KPDetector.from_config(cfg)
    gen = OcclusionAwareGenerator.from_config(cfg)
    disc = build_fomm_discriminator(cfg) if discriminator else None
    return kp, gen, disc
