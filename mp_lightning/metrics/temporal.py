"""Temporal consistency of predicted clips: the warping error (Lai et al. 2018) with OpenCV Farneback flows."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mp_lightning.errors import ConfigError
from mp_lightning.metrics.base import MeanMetric


def farneback_flow(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """OpenCV Farneback flow between two uint8 grey images (H, W) -> (H, W, 2) float32 pixels (dx, dy),
    such that prev(y, x) ~ nxt(y + dy, x + dx)."""
    import cv2

    return cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _grey_uint8(frames: Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W) uint8 luma (BT.601)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=frames.device).view(1, 3, 1, 1)
    grey = (frames.float().clamp(0, 1) * weights).sum(1) * 255.0
    return grey.round().to(torch.uint8).cpu().numpy()


def _sample(image: Tensor, flow: Tensor) -> Tuple[Tensor, Tensor]:
    """image (N, C, H, W) sampled at p + flow(p); flow (N, H, W, 2) in pixels. Returns the warped image and
    a (N, 1, H, W) mask of points that stay inside the frame."""
    n, _, h, w = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=image.device),
        torch.arange(w, dtype=torch.float32, device=image.device),
        indexing="ij",
    )
    x = xs + flow[..., 0]
    y = ys + flow[..., 1]
    inside = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).unsqueeze(1).float()
    # pixel centres at integer coordinates <-> align_corners=True
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped, inside


def _landmark_flow(src: Tensor, dst: Tensor, h: int, w: int) -> Tensor:
    """Dense flow (H, W, 2) in pixels interpolated from sparse landmark motion src -> dst ((K, 2) in [0, 1])
    by inverse-squared-distance weighting (smooth, exact at the landmarks up to the +1 regulariser)."""
    scale = torch.tensor([w, h], dtype=torch.float32, device=src.device)
    p_src, p_dst = src.float() * scale, dst.float() * scale
    ok = torch.isfinite(p_src).all(-1) & torch.isfinite(p_dst).all(-1)
    p_src, motion = p_src[ok], (p_dst - p_src)[ok]
    if p_src.shape[0] == 0:
        return torch.zeros(h, w, 2, device=src.device)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=src.device),
        torch.arange(w, dtype=torch.float32, device=src.device),
        indexing="ij",
    )
    pix = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
    weight = 1.0 / ((pix - p_src[None]).pow(2).sum(-1) + 1.0)
    flow = (weight[..., None] * motion[None]).sum(1) / weight.sum(1, keepdim=True)
    return flow.reshape(h, w, 2)


class TemporalWarpingError(MeanMetric):
    """Temporal warping error of predicted clips: for each pair of consecutive frames, warp predicted
    frame t+1 back to t with the optical flow t -> t+1 and take the mean absolute difference to predicted
    frame t over non-occluded pixels inside the frame; the metric is the mean over frame pairs (in [0, 1]
    units). A temporally consistent clip scores ~0; flicker raises it.

    Args:
        flow_source: where the flow t -> t+1 comes from:
            "target"     - OpenCV Farneback on the ground-truth frames (default; needs `target`),
            "prediction" - Farneback on the predicted frames themselves,
            "landmarks"  - dense flow interpolated from landmark motion (needs `landmarks`; no occlusion mask).
        occlusion_check: mask pixels that fail the forward-backward flow consistency test (Sundaram et al.
            2010, as in Lai et al. 2018's warping error); only for Farneback flows.

    update(preds, target=None, landmarks=None): preds and target (B, T, 3, H, W) in [0, 1], T >= 2;
    landmarks (B, T, K, 2) in [0, 1] of the frame.
    """

    higher_is_better = False

    def __init__(self, flow_source: str = "target", occlusion_check: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if flow_source not in ("target", "prediction", "landmarks"):
            raise ConfigError(
                f"metrics.warp.flow_source must be 'target', 'prediction' or 'landmarks', got {flow_source!r}"
            )
        self.flow_source = flow_source
        self.occlusion_check = occlusion_check

    def _pair_flows(self, frames: Tensor) -> Tuple[Tensor, Tensor]:
        """frames (T, 3, H, W) -> forward flows t->t+1 and backward flows t+1->t, each (T-1, H, W, 2)."""
        grey = _grey_uint8(frames)
        fwd = [farneback_flow(grey[t], grey[t + 1]) for t in range(len(grey) - 1)]
        bwd = [farneback_flow(grey[t + 1], grey[t]) for t in range(len(grey) - 1)] if self.occlusion_check else None
        to = lambda flows: torch.from_numpy(np.stack(flows)).to(frames.device)  # noqa: E731
        return to(fwd), (to(bwd) if bwd is not None else None)

    def update(self, preds: Tensor, target: Optional[Tensor] = None, landmarks: Optional[Tensor] = None) -> None:
        if preds.ndim != 5 or preds.shape[2] != 3 or preds.shape[1] < 2:
            raise ValueError(f"TemporalWarpingError: preds must be (B, T>=2, 3, H, W), got {tuple(preds.shape)}")
        b, t, _, h, w = preds.shape
        preds = preds.detach().float()
        for i in range(b):
            bwd = None
            if self.flow_source == "landmarks":
                if landmarks is None:
                    raise ValueError("TemporalWarpingError(flow_source='landmarks'): pass landmarks (B, T, K, 2)")
                fwd = torch.stack([_landmark_flow(landmarks[i, s], landmarks[i, s + 1], h, w) for s in range(t - 1)])
            elif self.flow_source == "prediction":
                fwd, bwd = self._pair_flows(preds[i])
            else:
                if target is None or target.shape != preds.shape:
                    raise ValueError(
                        "TemporalWarpingError(flow_source='target'): pass the ground-truth clip of the same shape "
                        f"as preds {tuple(preds.shape)}, got {None if target is None else tuple(target.shape)}"
                    )
                fwd, bwd = self._pair_flows(target[i])
            fwd = fwd.to(preds.device).float()
            warped, mask = _sample(preds[i, 1:], fwd)
            if bwd is not None:
                bwd_at, _ = _sample(bwd.to(preds.device).float().permute(0, 3, 1, 2), fwd)
                bwd_at = bwd_at.permute(0, 2, 3, 1)
                mismatch = (fwd + bwd_at).pow(2).sum(-1)
                bound = 0.01 * (fwd.pow(2).sum(-1) + bwd_at.pow(2).sum(-1)) + 0.5
                mask = mask * (mismatch < bound).unsqueeze(1).float()
            err = ((preds[i, :-1] - warped).abs() * mask).sum(dim=(1, 2, 3))
            valid = mask.sum(dim=(1, 2, 3)) * 3
            keep = valid > 0
            self._accumulate(err[keep] / valid[keep])
