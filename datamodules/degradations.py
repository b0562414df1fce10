"""Degradations of clean frames into low-quality inputs (the SR stage's training inputs): antialiased bicubic
resizing, Gaussian blur and JPEG-like blockwise DCT quantisation. Plain torch on (N, 3, H, W) in [0, 1]; it runs
where the frames are (on the device inside the SR stage)."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., 3, h, w) -> (..., 3, size, size), antialiased bicubic, clamped to [0, 1]."""
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    out = F.interpolate(flat, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0, 1).reshape(*lead, 3, size, size)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float32)
    m = torch.cos(math.pi * (2 * k[None] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


# the standard JPEG luminance table; quality scales it the libjpeg way
_JPEG_Q = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def jpeg_like(x: torch.Tensor, quality: float) -> torch.Tensor:
    """Blockwise 8x8 DCT quantisation of (N, 3, H, W) in [0, 1] (H, W multiples of 8), per channel.

    Not a real JPEG codec (no chroma subsampling / entropy coding): only its blocking and ringing artefacts."""
    if quality >= 100:
        return x
    n, c, h, w = x.shape
    if h % 8 or w % 8:
        return x
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = ((_JPEG_Q * scale + 50) / 100).floor().clamp(min=1).to(x)
    d = _dct_matrix().to(x)
    blocks = (x * 255 - 128).reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    coef = d @ blocks @ d.T
    coef = torch.round(coef / q) * q
    out = (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
    return ((out + 128) / 255).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
