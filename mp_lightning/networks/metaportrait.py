"""MetaPortrait base model (CVPR 2023): dense-landmark warping network + ID-preserving refinement network.

Checkpoint-compatible with the official `ckpt_base.pth.tar["generator"]`: module names and nesting follow
the official state dict exactly (see `shared/reference/metaportrait/base_generator*.tsv`), including the
`SPDAE_G` misspelling, `ladder_network.layerN.0`, `dense_motion_network.reger.{0,2}`, hook-based spectral
norm (`weight_orig`/`weight_u`/`weight_v`) and equalised-LR linears (`weight_orig`).

Data flow (official 256 px sizes in brackets):

    warp:   [source, source_line, driving_line] (9 ch) -> LadderEncoder -> code (512, unit norm)
            same 9 ch + code -> DenseMotionNetworkReg (AdaIN hourglass) -> flow @64, occlusion @256
            deformation = identity grid + flow; deformed = grid_sample(source, deformation)
    refine: feature_encoder(source) -> pyramid [512@32, 256@64, 128@128, 67@256 -> fuse_high_res -> 64]
            each warped by the deformation, concatenated with [occlusion, 8 gaze heatmaps, source_line,
            driving_line, driving_line * mouth_mask] -> SPADE-ID generator conditioned on the identity
            embedding -> tanh image.

Output range: the official refinement ends in tanh, i.e. (-1, 1), yet it is trained against [0, 1] targets
with no rescaling. `refine` returns that raw tensor (what the golden data and the official losses use);
`forward` returns it as `prediction_raw` and exposes `prediction = prediction_raw.clamp(0, 1)`, which is
what the stage contract promises. Losses should be computed on `prediction_raw` to match the official
training; metrics/media on `prediction`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm as _legacy_spectral_norm

from mp_lightning.networks.blocks import Hourglass, LayerNorm2d, kp2gaussian, make_coordinate_grid, warp

# official warping convention: flows live on an align_corners=True grid but are sampled with
# align_corners=False and reflection padding; the released weights were trained with this mismatch
GRID_SAMPLE_OPTIONS = dict(align_corners=False, padding_mode="reflection")


@dataclass
class MetaPortraitNetConfig:
    """Sizes of the MetaPortrait base generator. Defaults are the official 256 px model."""

    image_size: int = 256  # side of the square source/driving/output images, px (multiple of 2**feature_num_blocks)
    num_channels: int = 3  # image channels (RGB)
    line_channels: int = 3  # channels of ONE landmark-line image; source_line + driving_line give 2x this
    identity_dim: int = 256  # identity embedding size (official 256; facenet InceptionResnetV1 is 512)
    spectral_norm: bool = True  # False = the `--remove_sn` layout that meta-training checkpoints have
    ladder_channels: int = 64  # width of the ladder encoder's first conv (x2, x4, x8, x8, x8 after)
    ladder_input_size: int = 256  # the ladder resizes its input to this before six stride-2 convs
    code_dim: int = 512  # ladder (motion/expression) code size = AdaIN conditioning size
    motion_block_expansion: int = 64  # dense-motion hourglass width
    motion_max_features: int = 1024  # dense-motion hourglass channel cap
    motion_num_blocks: int = 5  # dense-motion hourglass depth
    motion_stop_level: int = 2  # decoder stops at image_size / 2**this (official `dec_lease`; flow @64)
    feature_block_expansion: int = 64  # refinement feature-encoder hourglass width
    feature_max_features: int = 512  # refinement feature-encoder channel cap
    feature_num_blocks: int = 3  # refinement feature-encoder depth (pyramid has this + 1 levels)
    spade_channels: int = 32  # SPADE generator base width `nf` (blocks use 16nf ... 1nf)
    spade_hidden: int = 128  # hidden channels of each SPADE modulation MLP
    num_gaze: int = 8  # number of gaze points turned into Gaussian heatmaps
    gaze_variance: float = 0.005  # variance of the gaze heatmaps on the [-1, 1] grid
    progressive_line_resize: bool = True  # official quirk: line maps are resized level to level (32->64->...)

    @classmethod
    def official(cls) -> "MetaPortraitNetConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "MetaPortraitNetConfig":
        """CPU-test size: 64 px, a few hundred thousand parameters."""
        return cls(
            image_size=64,
            identity_dim=16,
            ladder_channels=4,
            ladder_input_size=128,
            code_dim=16,
            motion_block_expansion=8,
            motion_max_features=32,
            motion_num_blocks=3,
            motion_stop_level=1,
            feature_block_expansion=8,
            feature_max_features=32,
            feature_num_blocks=3,
            spade_channels=2,
            spade_hidden=16,
        )

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------
# spectral norm / equalised LR helpers
# ----------------------------------------------------------------------------------------------------
def _maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Legacy hook-based spectral norm (keys weight_orig/u/v), or a plain layer with the key order the
    official `remove_spectral_norm` leaves behind (`bias` before `weight`)."""
    if enabled:
        return _legacy_spectral_norm(module)
    weight = module._parameters.pop("weight")
    module.register_parameter("weight", weight)
    return module


class _EqualLRLinear(nn.Module):
    """Linear layer with equalised learning rate: weight_orig * sqrt(2 / fan_in) at run time.

    Parameter order `bias`, `weight_orig` matches the official state dict.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.weight_orig = nn.Parameter(torch.randn(out_dim, in_dim))
        self.scale = math.sqrt(2 / in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_orig * self.scale, self.bias)


class EqualLinear(nn.Module):
    """StyleGAN-1 equalised-LR linear; the weight lives at `linear.weight_orig`."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = _EqualLRLinear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class AdaptiveInstanceNorm(nn.Module):
    """Identity AdaIN: gamma, beta = EqualLinear(identity) ; out = gamma * IN(x) + beta.

    x (B, C, H, W), style (B, D) -> (B, C, H, W).
    """

    def __init__(self, in_channel: int, style_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(in_channel)
        self.style = EqualLinear(style_dim, in_channel * 2)
        with torch.no_grad():
            self.style.linear.bias[:in_channel] = 1

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(style)[:, :, None, None].chunk(2, 1)
        return gamma * self.norm(x) + beta


# ----------------------------------------------------------------------------------------------------
# warping network
# ----------------------------------------------------------------------------------------------------
class LadderEncoder(nn.Module):
    """Six stride-2 3x3 convs (no bias, [SN], InstanceNorm, LeakyReLU 0.2) + Linear -> unit-norm code.

    x (B, in_features, H, W), any H, W (bilinearly resized to `input_size`) -> (B, code_dim), L2 norm 1.
    """

    def __init__(
        self,
        in_features: int = 9,
        base_channels: int = 64,
        code_dim: int = 512,
        input_size: int = 256,
        spectral_norm: bool = True,
    ):
        super().__init__()
        if input_size % 64:
            raise ValueError(f"ladder input_size must be a multiple of 64, got {input_size}")
        self.input_size = input_size
        nef = base_channels
        chans = [in_features, nef, nef * 2, nef * 4, nef * 8, nef * 8, nef * 8]
        for i in range(6):
            conv = _maybe_sn(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, bias=False), spectral_norm)
            self.add_module(f"layer{i + 1}", nn.Sequential(conv, nn.InstanceNorm2d(chans[i + 1], affine=False)))
        self.actvn = nn.LeakyReLU(0.2)
        self.final_size = input_size // 64
        self.fc = nn.Linear(nef * 8 * self.final_size ** 2, code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != self.input_size or x.shape[3] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = self.layer1(x)
        for i in range(2, 7):
            x = getattr(self, f"layer{i}")(self.actvn(x))
        x = self.fc(self.actvn(x).flatten(1))
        return x / (x.norm(dim=-1, p=2, keepdim=True) + 1e-5)


class DenseMotionNetworkReg(nn.Module):
    """AdaIN hourglass regressing a dense flow and an occlusion map.

    forward(x (B, in_features, H, W), code (B, code_dim)) -> dict
      flow (B, 2, h, w): flow in grid units (pixels * 2 / (size - 1)), h = H / 2**stop_level;
      deformation (B, h, w, 2): identity grid (align_corners=True style) + flow, (x, y);
      occlusion_map (B, 1, H, W) in (0, 1), bilinearly upsampled.
    """

    def __init__(
        self,
        in_features: int = 9,
        code_dim: int = 512,
        block_expansion: int = 64,
        max_features: int = 1024,
        num_blocks: int = 5,
        stop_level: int = 2,
    ):
        super().__init__()
        if stop_level < 1:
            raise ValueError("DenseMotionNetworkReg needs stop_level >= 1 (the LayerNorm heads)")
        self.hourglass = Hourglass(
            block_expansion, in_features, num_blocks, max_features, stop_level,
            norm="adain", cond_dim=code_dim, same_block=True,
        )
        c = self.hourglass.out_filters
        self.reger = nn.Sequential(LayerNorm2d(c), nn.LeakyReLU(0.1), nn.Conv2d(c, 2, 7, padding=3))
        self.occlusion_net = nn.Sequential(LayerNorm2d(c), nn.LeakyReLU(0.1), nn.Conv2d(c, 1, 7, padding=3))

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> Dict[str, torch.Tensor]:
        feat = self.hourglass(x, code)
        flow = self.reger(feat)
        _, _, h, w = flow.shape
        flow_norm = 2 * torch.cat([flow[:, :1] / (w - 1), flow[:, 1:] / (h - 1)], 1)
        grid = make_coordinate_grid((h, w), dtype=flow_norm.dtype, device=flow_norm.device)
        deformation = grid + flow_norm.permute(0, 2, 3, 1)
        occlusion = torch.sigmoid(self.occlusion_net(feat))
        if occlusion.shape[2:] != x.shape[2:]:
            occlusion = F.interpolate(occlusion, size=x.shape[2:], mode="bilinear", align_corners=False)
        return {"flow": flow_norm, "deformation": deformation, "occlusion_map": occlusion}


# ----------------------------------------------------------------------------------------------------
# refinement network
# ----------------------------------------------------------------------------------------------------
class SPADE(nn.Module):
    """SPADE-ID normalisation: attention-weighted fusion of SPADE (label map) and identity AdaIN.

    out = A * (IN(x)(1 + gamma(label)) + beta(label)) + (1 - A) * AdaIN_id(x), A = sigmoid(conv(x)).
    x (B, C, H, W), label (B, L, H, W), identity (B, D).
    """

    def __init__(self, norm_nc: int, label_nc: int, style_nc: int, hidden: int = 128, kernel_size: int = 3):
        super().__init__()
        pw = kernel_size // 2
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size, padding=pw), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pw)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pw)
        self.mlp_attention = nn.Sequential(nn.Conv2d(norm_nc, 1, kernel_size, padding=pw), nn.Sigmoid())
        self.adain = AdaptiveInstanceNorm(norm_nc, style_nc)

    def forward(self, x: torch.Tensor, label: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        actv = self.mlp_shared(label)
        spade_out = normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)
        attention = self.mlp_attention(x)
        return attention * spade_out + (1 - attention) * self.adain(x, identity)


class SPADEResnetBlock(nn.Module):
    """Pre-activation residual block with SPADE-ID norms; learned 1x1 shortcut when fin != fout."""

    def __init__(self, fin: int, fout: int, label_nc: int, style_nc: int, hidden: int = 128, sn: bool = True):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmid = min(fin, fout)
        self.conv_0 = _maybe_sn(nn.Conv2d(fin, fmid, 3, padding=1), sn)
        self.conv_1 = _maybe_sn(nn.Conv2d(fmid, fout, 3, padding=1), sn)
        if self.learned_shortcut:
            self.conv_s = _maybe_sn(nn.Conv2d(fin, fout, 1, bias=False), sn)
        self.norm_0 = SPADE(fin, label_nc, style_nc, hidden)
        self.norm_1 = SPADE(fmid, label_nc, style_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, style_nc, hidden)

    def forward(self, x: torch.Tensor, label: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, label, identity)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, label, identity), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, label, identity), 0.2))
        return x_s + dx


SPADE_BLOCK_NAMES = ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3")
SPADE_BLOCK_WIDTHS = (16, 16, 16, 16, 8, 4, 2, 1)  # multiples of nf: input of block i, output = next entry


class SPADEGenerator(nn.Module):
    """Identity vector -> image, modulated by a label-map pyramid (official `SPADEGenerator`, norm
    `spectralspadeinstance3x3id`).

    `conv1` (ConvTranspose 4x4) turns the identity (B, D) into a 16nf@4x4 map; seven SPADE-ID blocks follow,
    at resolutions image_size / 2**(6 - i) (at least 4), bilinear x2 upsampling in between. Block i reads
    label level `label_levels[i]`, bilinearly resized to its resolution. Output (B, 3, S, S), tanh.
    """

    def __init__(
        self,
        label_nc: List[int],
        label_levels: List[int],
        image_size: int = 256,
        class_dim: int = 256,
        conv_dim: int = 32,
        hidden: int = 128,
        sn: bool = True,
    ):
        super().__init__()
        nf = conv_dim
        self.label_levels = list(label_levels)
        self.resolutions = [max(4, image_size // 2 ** (6 - i)) for i in range(7)]
        self.conv1 = _maybe_sn(nn.ConvTranspose2d(class_dim, nf * 16, 4), sn)
        for i, name in enumerate(SPADE_BLOCK_NAMES):
            fin, fout = SPADE_BLOCK_WIDTHS[i] * nf, SPADE_BLOCK_WIDTHS[i + 1] * nf
            self.add_module(name, SPADEResnetBlock(fin, fout, label_nc[i], class_dim, hidden, sn))
        self.conv_img = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, label_pyramid: List[torch.Tensor], identity: torch.Tensor) -> torch.Tensor:
        x = self.conv1(identity.reshape(identity.shape[0], identity.shape[1], 1, 1))
        for i, name in enumerate(SPADE_BLOCK_NAMES):
            res = self.resolutions[i]
            if x.shape[-1] != res:
                if res == 2 * x.shape[-1]:
                    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
                else:
                    x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
            label = F.interpolate(
                label_pyramid[self.label_levels[i]], size=(res, res), mode="bilinear", align_corners=False
            )
            x = getattr(self, name)(x, label, identity)
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.tanh(x)


# ----------------------------------------------------------------------------------------------------
# top level
# ----------------------------------------------------------------------------------------------------
class MetaPortraitGenerator(nn.Module):
    """The official `OcclusionAwareSPADEGenerator` (warping + refinement), checkpoint-compatible.

    Two-call API as the official code uses it:
      `warp(source, source_line, driving_line)` -> dict(deformation, deformed, occlusion_map, flow, ladder_code)
      `refine(source, warp_out, source_identity, source_line, driving_line, gaze_points, mouth_mask)`
          -> raw prediction (B, 3, H, W), tanh range (-1, 1)
    `forward(...)` runs both and returns the warp dict plus `prediction_raw` and `prediction` (clamped to
    [0, 1]).
    """

    def __init__(self, config: Optional[MetaPortraitNetConfig] = None):
        super().__init__()
        cfg = config or MetaPortraitNetConfig()
        self.config = cfg
        self.num_channels = cfg.num_channels
        in_warp = cfg.num_channels + 2 * cfg.line_channels
        self.ladder_network = LadderEncoder(
            in_warp, cfg.ladder_channels, cfg.code_dim, cfg.ladder_input_size, cfg.spectral_norm
        )
        self.dense_motion_network = DenseMotionNetworkReg(
            in_warp, cfg.code_dim, cfg.motion_block_expansion, cfg.motion_max_features,
            cfg.motion_num_blocks, cfg.motion_stop_level,
        )
        be, mf, nb = cfg.feature_block_expansion, cfg.feature_max_features, cfg.feature_num_blocks
        self.feature_encoder = Hourglass(be, cfg.num_channels, nb, mf, 0, norm="instance")
        self.fuse_high_res = nn.Conv2d(be + cfg.num_channels, be, kernel_size=(3, 3), padding=(1, 1))

        # label pyramid: level j has resolution image_size / 2**(nb - j)
        feat_ch = [min(mf, be * 2 ** nb)] + [min(mf, be * 2 ** (nb - j)) for j in range(1, nb)] + [be]
        extra = 1 + cfg.num_gaze + 3 * cfg.line_channels  # occlusion, gaze, src+drv lines, mouth line
        self.label_channels = [c + extra for c in feat_ch]
        levels = []
        for i in range(7):
            res = max(4, cfg.image_size // 2 ** (6 - i))
            levels.append(max(0, min(nb, nb - int(round(math.log2(cfg.image_size / res))))))
        self.SPDAE_G = SPADEGenerator(
            [self.label_channels[lv] for lv in levels], levels, cfg.image_size, cfg.identity_dim,
            cfg.spade_channels, cfg.spade_hidden, cfg.spectral_norm,
        )
        self.reset_parameters()

    # -------------------------------------------------------------------------------------------- init
    def reset_parameters(self) -> None:
        """Official initialisation: Xavier-normal (gain 0.02) for every Conv2d and Linear, biases 0
        (spectral-norm weights included); ConvTranspose2d keeps PyTorch's default. As in the official
        code this also zeroes the identity-AdaIN gamma bias (the EqualLinear weights stay N(0, 1))."""
        init_official_(self)

    # -------------------------------------------------------------------------------------------- warp
    def warp(self, source: torch.Tensor, source_line: torch.Tensor, driving_line: torch.Tensor) -> Dict[str, torch.Tensor]:
        """source (B, 3, H, W) in [0, 1]; source_line, driving_line (B, 3, H, W) in [0, 1].

        Returns deformation (B, h, w, 2) sampling grid in [-1, 1] (h = H / 2**motion_stop_level),
        deformed (B, 3, H, W) the warped source, occlusion_map (B, 1, H, W) in (0, 1),
        flow (B, 2, h, w) in grid units, ladder_code (B, code_dim) unit norm.
        """
        x = torch.cat((source, source_line, driving_line), dim=1)
        code = self.ladder_network(x)
        motion = self.dense_motion_network(x, code)
        return {
            "deformation": motion["deformation"],
            "deformed": warp(source, motion["deformation"], **GRID_SAMPLE_OPTIONS),
            "occlusion_map": motion["occlusion_map"],
            "flow": motion["flow"],
            "ladder_code": code,
        }

    # -------------------------------------------------------------------------------------------- refine
    def label_pyramid(
        self,
        source: torch.Tensor,
        warp_out: Dict[str, torch.Tensor],
        source_line: torch.Tensor,
        driving_line: torch.Tensor,
        gaze_points: torch.Tensor,
        mouth_mask: torch.Tensor,
    ) -> List[torch.Tensor]:
        """The SPADE label maps, coarse to fine: [warped feature, occlusion, gaze heatmaps, source_line,
        driving_line, mouth_line] per pyramid level (official channel order)."""
        _, feats = self.feature_encoder(source, return_all=True)
        feats[-1] = self.fuse_high_res(feats[-1])
        deformation, occlusion = warp_out["deformation"], warp_out["occlusion_map"]
        lines = torch.cat((source_line, driving_line), dim=1)
        mouth_line = driving_line * mouth_mask
        pyramid = []
        for feat in feats:
            size = feat.shape[2:]
            feat = warp(feat, deformation, **GRID_SAMPLE_OPTIONS)
            occ = occlusion if occlusion.shape[2:] == size else F.interpolate(
                occlusion, size=size, mode="bilinear", align_corners=False
            )
            gaze = kp2gaussian(gaze_points, size, self.config.gaze_variance)
            if self.config.progressive_line_resize:
                # the official loop overwrites its line tensors, so each level is resized from the previous one
                lines = F.interpolate(lines, size=size, mode="bilinear", align_corners=False)
                mouth_line = F.interpolate(mouth_line, size=size, mode="bilinear", align_corners=False)
                lv_lines, lv_mouth = lines, mouth_line
            else:
                lv_lines = F.interpolate(torch.cat((source_line, driving_line), 1), size=size, mode="bilinear",
                                         align_corners=False)
                lv_mouth = F.interpolate(driving_line * mouth_mask, size=size, mode="bilinear", align_corners=False)
            pyramid.append(torch.cat((feat, occ, gaze, lv_lines, lv_mouth), dim=1))
        return pyramid

    def refine(
        self,
        source: torch.Tensor,
        warp_out: Dict[str, torch.Tensor],
        source_identity: torch.Tensor,
        source_line: torch.Tensor,
        driving_line: torch.Tensor,
        gaze_points: torch.Tensor,
        mouth_mask: torch.Tensor,
    ) -> torch.Tensor:
        """source (B, 3, H, W) in [0, 1]; warp_out from `warp`; source_identity (B, identity_dim), used
        as is; source_line / driving_line (B, 3, H, W) in [0, 1]; gaze_points (B, num_gaze, 2) driving gaze
        points in [-1, 1] (x, y); mouth_mask (B, 1, H, W) 0/1.

        Returns the raw official output (B, 3, H, W), tanh range (-1, 1).
        """
        pyramid = self.label_pyramid(source, warp_out, source_line, driving_line, gaze_points, mouth_mask)
        return self.SPDAE_G(pyramid, source_identity)

    def forward(
        self,
        source: torch.Tensor,
        source_line: torch.Tensor,
        driving_line: torch.Tensor,
        source_identity: torch.Tensor,
        gaze_points: torch.Tensor,
        mouth_mask: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """Warp + refine. Returns the `warp` dict plus prediction_raw (tanh range) and prediction
        (clamped to [0, 1])."""
        out = self.warp(source, source_line, driving_line)
        raw = self.refine(source, out, source_identity, source_line, driving_line, gaze_points, mouth_mask)
        out["prediction_raw"] = raw
        out["prediction"] = raw.clamp(0, 1)
        return out

    def warp_parameters(self):
        """Parameters of the warping network (ladder + dense motion), which the official optimiser
        trains with a smaller learning rate (`warplr_tune`)."""
        return [p for n, p in self.named_parameters() if n.startswith(("ladder_network.", "dense_motion_network."))]

    def refine_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith(("ladder_network.", "dense_motion_network."))]


def init_official_(module: nn.Module, gain: float = 0.02) -> None:
    """Official MetaPortrait init, applied to every submodule of `module` (see `reset_parameters`)."""
    for m in module.modules():
        if isinstance(m, _EqualLRLinear):
            with torch.no_grad():
                m.weight_orig.normal_()
                m.bias.zero_()
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight_orig if hasattr(m, "weight_orig") else m.weight
            nn.init.xavier_normal_(w, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def remove_spectral_norm_(generator: nn.Module) -> nn.Module:
    """Strip the spectral-norm hooks in place, like the official `--remove_sn`; keys become plain `weight`
    (placed after `bias`, as the official state dicts have them). Returns the generator."""
    from torch.nn.utils import remove_spectral_norm

    for m in generator.modules():
        if hasattr(m, "weight_orig") and hasattr(m, "weight_u"):
            remove_spectral_norm(m)
    if hasattr(generator, "config"):
        generator.config.spectral_norm = False
    return generator
