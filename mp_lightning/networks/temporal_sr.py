"""MetaPortrait temporal super-resolution: a GFPGAN-style U-Net encoder, a StyleGAN2 ("clean") decoder with
spatial feature transforms (CSFT), and temporal window modules that mix every frame's features with those of
its neighbours at each encoder and decoder level (NOTES.md section 2.4, official `GFPGANv1Clean_UnetWindow`).

The module and attribute names follow the official state dict (manifest `sr_temporal_gfpgan.tsv`, 341 keys
including the 15 noise buffers), so the released `temporal_gfpgan.pth` and GFPGAN v1.3 load without renaming.

Unlike the official network, clips are batched: an input (B, T, 3, H, W) is folded into a conv batch of B*T
frames and the window modules mix along T inside each clip only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from mp_lightning.errors import CheckpointError, ConfigError
from mp_lightning.state_dicts import list_keys, load_matching, own_copies, read_checkpoint

__all__ = [
    "TemporalSRConfig",
    "TemporalSRGenerator",
    "TemporalWindowFusion",
    "StyleGAN2DecoderCSFT",
    "NOISE_MODES",
    "read_basicsr_state_dict",
    "init_from_gfpgan",
]

NOISE_MODES = ("zero", "random", "stored")


@dataclass
class TemporalSRConfig:
    """Hyper-parameters of `TemporalSRGenerator`; defaults are the official 512 network (`same_id_demo.yml`)."""

    out_size: int = 512  # output side (power of 2); inputs are out_size or out_size/2 (then upsampled x2 first)
    num_style_feat: int = 512  # width of a W latent (StyleGAN2 style vector)
    channel_multiplier: float = 2.0  # StyleGAN2 width multiplier for resolutions >= 64
    narrow: float = 1.0  # global width ratio; the U-Net branch uses narrow / 2
    num_mlp: int = 8  # StyleGAN2 mapping MLP depth (kept for checkpoint keys; unused when input_is_latent)
    sft_half: bool = True  # SFT modulates only half of the decoder channels (GFPGAN v1.3)
    different_w: bool = True  # one W latent per decoder layer (W+), i.e. 2*log2(out_size)-2 latents
    input_is_latent: bool = True  # encoder style codes skip the mapping MLP
    freeze_decoder: bool = True  # StyleGAN2 decoder weights come from GFPGAN v1.3 and stay frozen officially
    noise_mode: str = "zero"  # StyleGAN2 noise injection: "zero" (official), "random", or "stored" buffers
    temporal: bool = True  # temporal window modules on; off = per-frame GFPGAN-style SR (paper ablation)
    window_radius: int = 1  # frames on each side seen by one window module (official 1: [t-1, t, t+1])
    zero_init_temporal: bool = True  # zero the last conv of each window module so it starts as identity

    @classmethod
    def official(cls) -> "TemporalSRConfig":
        """The released 256 -> 512 network: 154,690,396 parameters, 124,413,813 trainable."""
        return cls()

    @classmethod
    def tiny(cls, **overrides) -> "TemporalSRConfig":
        """A CPU-fast config with the same topology: 32 -> 64, widths 16 (U-Net) / 32 (decoder)."""
        cfg = cls(out_size=64, num_style_feat=32, channel_multiplier=2.0, narrow=1 / 16, num_mlp=2)
        return replace(cfg, **overrides)


def _decoder_channels(narrow: float, channel_multiplier: float) -> Dict[int, int]:
    """StyleGAN2 feature widths per resolution (the U-Net uses the same table with narrow / 2)."""
    return {
        4: int(512 * narrow),
        8: int(512 * narrow),
        16: int(512 * narrow),
        32: int(512 * narrow),
        64: int(256 * channel_multiplier * narrow),
        128: int(128 * channel_multiplier * narrow),
        256: int(64 * channel_multiplier * narrow),
        512: int(32 * channel_multiplier * narrow),
        1024: int(16 * channel_multiplier * narrow),
    }


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope=0.2)


# ----------------------------------------------------------------------------------------------------------
# StyleGAN2 decoder with spatial feature transforms


class NormStyleCode(nn.Module):
    """Scales each style code (N, F) to unit root-mean-square, as the StyleGAN2 mapping network's input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution without bias; the base weight is pre-scaled by 1/sqrt(fan_in).

    Input (N, C_in, h, w) and styles (N, num_style_feat); output (N, C_out, h', w') with h' = 2h when
    `upsample` (bilinear, before the conv, as the "clean" StyleGAN2 does instead of a transposed conv).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_style_feat: int,
                 demodulate: bool = True, upsample: bool = False, eps: float = 1e-8):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample, self.eps = demodulate, upsample, eps
        self.modulation = nn.Linear(num_style_feat, in_channels, bias=True)
        fan_in = in_channels * kernel_size ** 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size)
                                   / math.sqrt(fan_in))
        # the modulation starts as identity scaling: unit-variance linear map, bias 1
        nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
        nn.init.constant_(self.modulation.bias, 1.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n, c_in = x.shape[:2]
        scale = self.modulation(style).view(n, 1, c_in, 1, 1)
        weight = self.weight * scale  # (N, C_out, C_in, k, k): one kernel per sample
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + self.eps)
            weight = weight * demod.view(n, self.out_channels, 1, 1, 1)
        weight = weight.view(n * self.out_channels, c_in, self.kernel_size, self.kernel_size)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        out = F.conv2d(x.reshape(1, n * c_in, h, w), weight, padding=self.kernel_size // 2, groups=n)
        return out.view(n, self.out_channels, *out.shape[-2:])


class StyleConv(nn.Module):
    """Modulated 3x3 conv, noise injection, bias, LeakyReLU; keys `weight` (noise strength), `bias`,
    `modulated_conv.*`. Output (N, C_out, h', w')."""

    def __init__(self, in_channels: int, out_channels: int, num_style_feat: int, upsample: bool = False):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, num_style_feat,
                                              demodulate=True, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: Optional[torch.Tensor] = None,
                random_noise: bool = False) -> torch.Tensor:
        """noise: (1 or N, 1, h', w') added with the learned strength; `random_noise` draws it fresh instead;
        neither: no noise (the official 'zero' mode, where adding weight * 0 is an exact no-op)."""
        # sqrt(2) keeps the activation gain of the original StyleGAN2 fused bias-activation
        out = self.modulated_conv(x, style) * 2 ** 0.5
        if random_noise:
            noise = torch.randn(out.shape[0], 1, *out.shape[-2:], device=out.device, dtype=out.dtype)
        if noise is not None:
            out = out + self.weight * noise
        return _leaky(out + self.bias)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB plus the bilinearly upsampled RGB of the previous level."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.upsample:
                skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
            out = out + skip
        return out


class ConstantInput(nn.Module):
    """The learned 4x4 start tensor, key `weight` (1, C, 4, 4)."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.weight.expand(batch, -1, -1, -1)


class StyleGAN2DecoderCSFT(nn.Module):
    """StyleGAN2 generator ("clean", no custom CUDA ops) whose first conv at each resolution 8..out_size is
    followed by a spatial feature transform `x * scale + shift` from the U-Net (on half the channels when
    `sft_half`).

    Keys: style_mlp.{1,3,..}, constant_input, style_conv1, to_rgb1, style_convs.*, to_rgbs.*, noises.noise*.
    """

    def __init__(self, out_size: int, num_style_feat: int = 512, num_mlp: int = 8,
                 channel_multiplier: float = 2.0, narrow: float = 1.0, sft_half: bool = True):
        super().__init__()
        self.num_style_feat = num_style_feat
        self.sft_half = sft_half
        self.log_size = int(math.log2(out_size))
        self.num_layers = (self.log_size - 2) * 2 + 1  # style convs = noise inputs
        self.num_latent = self.log_size * 2 - 2  # W+ codes: style convs + the final to_rgb
        channels = _decoder_channels(narrow, channel_multiplier)
        self.channels = channels

        mlp: List[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            linear = nn.Linear(num_style_feat, num_style_feat)
            nn.init.kaiming_normal_(linear.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            mlp += [linear, nn.LeakyReLU(0.2)]
        self.style_mlp = nn.Sequential(*mlp)

        self.constant_input = ConstantInput(channels[4], size=4)
        self.style_conv1 = StyleConv(channels[4], channels[4], num_style_feat, upsample=False)
        self.to_rgb1 = ToRGB(channels[4], num_style_feat, upsample=False)

        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer in range(self.num_layers):
            res = 2 ** ((layer + 5) // 2)  # 4, 8, 8, 16, 16, ...
            self.noises.register_buffer(f"noise{layer}", torch.randn(1, 1, res, res))
        in_ch = channels[4]
        for log_res in range(3, self.log_size + 1):
            out_ch = channels[2 ** log_res]
            self.style_convs.append(StyleConv(in_ch, out_ch, num_style_feat, upsample=True))
            self.style_convs.append(StyleConv(out_ch, out_ch, num_style_feat, upsample=False))
            self.to_rgbs.append(ToRGB(out_ch, num_style_feat, upsample=True))
            in_ch = out_ch

    def _noise_args(self, mode: str, layer: int) -> dict:
        if mode == "stored":
            return {"noise": getattr(self.noises, f"noise{layer}")}
        return {"random_noise": mode == "random"}

    def forward(self, styles: torch.Tensor, conditions: List[torch.Tensor], input_is_latent: bool = True,
                noise_mode: str = "zero") -> torch.Tensor:
        """styles: (N, num_latent, F) W+ codes or (N, F) one code for all layers; conditions: [scale, shift]
        per resolution 8..out_size, (N, C_sft, r, r). Returns the image (N, 3, S, S), roughly in [-1, 1]."""
        if styles.dim() == 2:
            styles = styles.unsqueeze(1).expand(-1, self.num_latent, -1)
        if not input_is_latent:
            n, l, f = styles.shape
            styles = self.style_mlp(styles.reshape(n * l, f)).view(n, l, f)
        latent = styles
        out = self.constant_input(latent.shape[0])
        out = self.style_conv1(out, latent[:, 0], **self._noise_args(noise_mode, 0))
        rgb = self.to_rgb1(out, latent[:, 1])
        for level, to_rgb in enumerate(self.to_rgbs):
            i = 2 * level + 1  # latent / noise index of this level's first (upsampling) conv
            out = self.style_convs[2 * level](out, latent[:, i], **self._noise_args(noise_mode, i))
            if 2 * level + 1 < len(conditions):  # official: conditions may cover fewer levels
                scale, shift = conditions[2 * level], conditions[2 * level + 1]
                if self.sft_half:
                    keep, mod = torch.split(out, out.shape[1] // 2, dim=1)
                    out = torch.cat([keep, mod * scale + shift], dim=1)
                else:
                    out = out * scale + shift
            out = self.style_convs[2 * level + 1](out, latent[:, i + 1], **self._noise_args(noise_mode, i + 1))
            rgb = to_rgb(out, latent[:, i + 2], rgb)
        return rgb


# ----------------------------------------------------------------------------------------------------------
# U-Net encoder parts and temporal windows


class ResBlock(nn.Module):
    """conv3x3 -> lrelu -> bilinear resize (x0.5 or x2) -> conv3x3 -> lrelu, plus a resized 1x1 (no bias) skip."""

    def __init__(self, in_channels: int, out_channels: int, mode: str = "down"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.scale_factor = 0.5 if mode == "down" else 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _leaky(self.conv1(x))
        out = F.interpolate(out, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        out = _leaky(self.conv2(out))
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        return out + self.skip(x)


class TemporalWindowFusion(nn.Module):
    """Adds to each frame's features a correction computed from its (2r+1)-frame window.

    The window [f(t-r), ..., f(t), ..., f(t+r)] is concatenated along channels (clip edges replicated) and
    passed through conv3x3 -> LeakyReLU(0.2) -> conv3x3 ((2r+1)C -> C); the result is added to f(t).
    With `zero_init` the last conv starts at zero, so the module starts as the identity (official
    `zero_out_init`, which lets GFPGAN v1.3 weights initialise the temporal network exactly).
    Keys `conv1.*`, `conv2.*` as the official `ConvReLUConv`.
    """

    def __init__(self, channels: int, radius: int = 1, zero_init: bool = True):
        super().__init__()
        self.radius = radius
        width = (2 * radius + 1) * channels
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(width, channels, 3, 1, 1)
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, feat: torch.Tensor, num_frames: int) -> torch.Tensor:
        """feat: (B*T, C, h, w), clip-major (frame t of clip b at b*T + t). Returns the same shape."""
        bt, c, h, w = feat.shape
        b, t = bt // num_frames, num_frames
        offsets = torch.arange(-self.radius, self.radius + 1, device=feat.device)
        frame_ids = (torch.arange(t, device=feat.device)[:, None] + offsets[None]).clamp_(0, t - 1)
        window = feat.view(b, t, c, h, w)[:, frame_ids.flatten()]  # (B, T*(2r+1), C, h, w)
        window = window.reshape(bt, (2 * self.radius + 1) * c, h, w)
        return self.conv2(_leaky(self.conv1(window))) + feat


# ----------------------------------------------------------------------------------------------------------


class TemporalSRGenerator(nn.Module):
    """MetaPortrait temporal SR generator (official `GFPGANv1Clean_UnetWindow`, `temp_type='unet_window'`).

    Input: low-quality clips (B, T, 3, H, W) in [0, 1] with H = W = out_size / 2 (or out_size).
    Output: (B, T, 3, out_size, out_size) = (decoder image + 1) / 2, *not clamped* (the official semantics,
    roughly in [0, 1]; pass `clamp=True` for display). Temporal modules mix frames only within a clip.
    """

    def __init__(self, config: Optional[TemporalSRConfig] = None, **overrides):
        super().__init__()
        cfg = replace(config or TemporalSRConfig(), **overrides)
        _validate(cfg)
        self.config = cfg
        self.log_size = int(math.log2(cfg.out_size))
        self.num_latent = self.log_size * 2 - 2
        unet = _decoder_channels(cfg.narrow * 0.5, cfg.channel_multiplier)
        self.unet_channels = unet

        # registration order = official state-dict order (manifest rows)
        self.conv_body_first = nn.Conv2d(3, unet[cfg.out_size], 1)
        self.conv_body_down = nn.ModuleList()
        self.window_down = nn.ModuleList() if cfg.temporal else None
        in_ch = unet[cfg.out_size]
        for log_res in range(self.log_size, 2, -1):
            out_ch = unet[2 ** (log_res - 1)]
            self.conv_body_down.append(ResBlock(in_ch, out_ch, mode="down"))
            if cfg.temporal:
                self.window_down.append(TemporalWindowFusion(out_ch, cfg.window_radius, cfg.zero_init_temporal))
            in_ch = out_ch
        self.final_conv = nn.Conv2d(in_ch, unet[4], 3, 1, 1)

        self.conv_body_up = nn.ModuleList()
        in_ch = unet[4]
        for log_res in range(3, self.log_size + 1):
            out_ch = unet[2 ** log_res]
            self.conv_body_up.append(ResBlock(in_ch, out_ch, mode="up"))
            in_ch = out_ch
        # GFPGAN's intermediate RGB heads (pyramid loss); the official SR forward computes and drops them
        self.toRGB = nn.ModuleList(nn.Conv2d(unet[2 ** r], 3, 1) for r in range(3, self.log_size + 1))

        n_codes = self.num_latent if cfg.different_w else 1
        self.final_linear = nn.Linear(unet[4] * 4 * 4, n_codes * cfg.num_style_feat)

        self.stylegan_decoder = StyleGAN2DecoderCSFT(cfg.out_size, cfg.num_style_feat, cfg.num_mlp,
                                                     cfg.channel_multiplier, cfg.narrow, cfg.sft_half)
        self.set_decoder_frozen(cfg.freeze_decoder)

        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        self.recurrent_forward = nn.ModuleList() if cfg.temporal else None
        for log_res in range(3, self.log_size + 1):
            ch = unet[2 ** log_res]
            sft_ch = ch if cfg.sft_half else 2 * ch
            for heads in (self.condition_scale, self.condition_shift):
                heads.append(nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2),
                                           nn.Conv2d(ch, sft_ch, 3, 1, 1)))
            if cfg.temporal:
                self.recurrent_forward.append(TemporalWindowFusion(ch, cfg.window_radius, cfg.zero_init_temporal))

    # -- helpers ------------------------------------------------------------------------------------------

    def set_decoder_frozen(self, frozen: bool = True) -> None:
        """Freeze (official) or unfreeze the StyleGAN2 decoder's parameters."""
        for p in self.stylegan_decoder.parameters():
            p.requires_grad_(not frozen)

    def decoder_parameter_names(self) -> List[str]:
        """Names of the StyleGAN2 decoder parameters (the official optimiser leaves them out)."""
        return [n for n, _ in self.named_parameters() if n.startswith("stylegan_decoder.")]

    def temporal_parameter_names(self) -> List[str]:
        """Names of the window-module parameters (absent from GFPGAN v1.3 checkpoints)."""
        return [n for n, _ in self.named_parameters() if n.startswith(("window_down.", "recurrent_forward."))]

    def parameters_outside_forward(self) -> List[nn.Parameter]:
        """Parameters the plain forward never uses under this config (kept for the official state-dict layout):
        GFPGAN's intermediate RGB heads (only with `return_intermediates`), the decoder's style MLP when the
        encoder's codes are already latents, and the noise strengths in the official zero-noise mode. A
        training stage freezes them, so DDP does not wait for their gradients."""
        cfg = self.config
        unused = list(self.toRGB.parameters())
        decoder = self.stylegan_decoder
        if cfg.input_is_latent:
            unused += list(decoder.style_mlp.parameters())
        if cfg.noise_mode == "zero":
            unused += [decoder.style_conv1.weight] + [conv.weight for conv in decoder.style_convs]
        return unused

    # -- forward ------------------------------------------------------------------------------------------

    def forward(self, lq: torch.Tensor, clamp: bool = False, return_intermediates: bool = False,
                noise_mode: Optional[str] = None) -> Union[torch.Tensor, Dict[str, object]]:
        """lq: (B, T, 3, H, W) in [0, 1], H = W in {out_size / 2, out_size}.

        Returns (B, T, 3, out_size, out_size), (decoder + 1) / 2, clamped to [0, 1] only if `clamp`.
        With `return_intermediates`, a dict: `output` (as above), `style_code` (B, T, L, num_style_feat)
        with L = num_latent (or 1 without different_w), `rgbs` list of (B, T, 3, r, r) for r = 8..out_size
        (GFPGAN's intermediate RGB heads, in [-1, 1] units).
        """
        cfg = self.config
        if lq.dim() != 5 or lq.shape[2] != 3:
            raise ValueError(f"expected low-quality clips (B, T, 3, H, W), got {tuple(lq.shape)}")
        b, t, _, h, w = lq.shape
        if h != w or h not in (cfg.out_size, cfg.out_size // 2):
            raise ValueError(f"input frames must be square with side {cfg.out_size // 2} or {cfg.out_size}, "
                             f"got {h}x{w}")
        mode = noise_mode or cfg.noise_mode
        if mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")

        x = lq.reshape(b * t, 3, h, w) * 2.0 - 1.0
        if h != cfg.out_size:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

        feat = _leaky(self.conv_body_first(x))
        skips = []
        for i, down in enumerate(self.conv_body_down):
            feat = down(feat)
            if self.window_down is not None:
                feat = self.window_down[i](feat, t)
            skips.append(feat)
        feat = _leaky(self.final_conv(feat))

        style_code = self.final_linear(feat.flatten(1))
        style_code = style_code.view(b * t, -1, cfg.num_style_feat)

        conditions: List[torch.Tensor] = []
        rgbs: List[torch.Tensor] = []
        for i, up in enumerate(self.conv_body_up):
            feat = up(feat + skips[-1 - i])
            if self.recurrent_forward is not None:
                feat = self.recurrent_forward[i](feat, t)
            conditions.append(self.condition_scale[i](feat))
            conditions.append(self.condition_shift[i](feat))
            if return_intermediates:
                rgbs.append(self.toRGB[i](feat))

        styles = style_code if cfg.different_w else style_code[:, 0]
        image = self.stylegan_decoder(styles, conditions, input_is_latent=cfg.input_is_latent, noise_mode=mode)
        out = (image.view(b, t, 3, cfg.out_size, cfg.out_size) + 1.0) / 2.0
        if clamp:
            out = out.clamp(0.0, 1.0)
        if not return_intermediates:
            return out
        return {
            "output": out,
            "style_code": style_code.view(b, t, -1, cfg.num_style_feat),
            "rgbs": [r.view(b, t, *r.shape[1:]) for r in rgbs],
        }


def _validate(cfg: TemporalSRConfig) -> None:
    size = cfg.out_size
    if size < 8 or size > 1024 or size & (size - 1):
        raise ConfigError(f"out_size must be a power of 2 in [8, 1024], got {size}")
    if cfg.noise_mode not in NOISE_MODES:
        raise ConfigError(f"noise_mode must be one of {NOISE_MODES}, got {cfg.noise_mode!r}")
    if cfg.temporal and cfg.window_radius < 1:
        raise ConfigError(f"window_radius must be >= 1 when temporal modules are on, got {cfg.window_radius}")
    dec = _decoder_channels(cfg.narrow, cfg.channel_multiplier)
    unet = _decoder_channels(cfg.narrow * 0.5, cfg.channel_multiplier)
    for r in (2 ** k for k in range(2, int(math.log2(size)) + 1)):
        if unet[r] < 1:
            raise ConfigError(f"narrow={cfg.narrow}, channel_multiplier={cfg.channel_multiplier} leave no "
                              f"U-Net channels at resolution {r}")
        # the SFT heads emit the U-Net width (x2 without sft_half) and must match the modulated channels
        if r >= 8 and (dec[r] != 2 * unet[r] or dec[r] % 2):
            raise ConfigError(f"SFT needs decoder channels = 2x U-Net channels at resolution {r}: decoder "
                              f"{dec[r]}, U-Net {unet[r]} (adjust narrow / channel_multiplier)")


# ----------------------------------------------------------------------------------------------------------
# weights from BasicSR files: `{'params': state_dict, 'params_ema': state_dict}` (official SR and GFPGAN v1.3)

TEMPORAL_PREFIXES = ("window_down.", "recurrent_forward.")  # the modules GFPGAN v1.3 lacks


def read_basicsr_state_dict(path, use_ema: bool = True) -> tuple[Dict[str, torch.Tensor], str]:
    """Reads a BasicSR checkpoint and returns (float32 state dict with independent storage, key used).

    Takes `params_ema` when `use_ema` and present, else `params`; a bare state dict is accepted too
    (key used: ""). Raises CheckpointError if the file is missing or holds neither.
    """
    blob = read_checkpoint(path)
    order = ["params_ema", "params"] if use_ema else ["params", "params_ema"]
    key = next((k for k in order if k in blob), None)
    if key is not None:
        sd = blob[key]
    elif blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        sd, key = blob, ""
    else:
        raise CheckpointError(f"{path}: not a BasicSR checkpoint: no 'params' or 'params_ema' "
                              f"(top-level keys: {list_keys(sorted(map(str, blob)))})")
    return own_copies(sd), key


def init_from_gfpgan(net: TemporalSRGenerator, path, param_key: str = "params_ema") -> dict:
    """Initialises `net` from a GFPGAN v1.3 checkpoint the way official training does (`GFPGANv1_load_path`:
    `params_ema`, non-strict). Keys absent from the file (the temporal window modules) keep their init;
    with zero-initialised window modules the result equals the per-frame GFPGAN network.

    Returns info: loaded, missing (in the network, not in the file), unexpected (in the file only) key lists,
    param_key. Raises CheckpointError on a shape mismatch (the official non-strict load fails there too)
    or if no key at all matches.
    """
    blob_sd, key = read_basicsr_state_dict(path, use_ema=(param_key == "params_ema"))
    report = load_matching(net, blob_sd, f"{path} (GFPGAN)")
    return {
        "path": str(path),
        "param_key": key,
        "loaded": report.loaded,
        "missing": report.missing,
        "unexpected": report.unexpected,
        "missing_non_temporal": [k for k in report.missing if not k.startswith(TEMPORAL_PREFIXES)],
    }
