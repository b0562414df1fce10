"""FOMM motion transfer at inference: relative and absolute keypoint motion (BASELINES.md 1.8).

Keypoint dicts are `{"value": (B, K, 2) in [-1, 1] (x, y), "jacobian": (B, K, 2, 2)}` as returned by
`mp_lightning.networks.fomm.KPDetector`.

* absolute: the driving keypoints are used unchanged (transfers the driver's face shape; FOMM's
  `run.py --mode reconstruction` and the default of `demo.py`).
* relative (`demo.py --relative`): value = kp_src + (kp_drv - kp_drv_initial) * s,
  jacobian = J_drv J_drv_initial^-1 J_src; with `adapt_movement_scale` (`--adapt_scale`)
  s = sqrt(hull area of kp_src / hull area of kp_drv_initial), else s = 1.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Optional

import numpy as np
import torch

KPDict = Dict[str, torch.Tensor]

MOTION_MODES = ("relative", "absolute")


def convex_hull_area(points: torch.Tensor) -> float:
    """Area of the convex hull of (K, 2) points (scipy ConvexHull; in 2-D its `volume` is the area).

    Returns 0.0 for degenerate sets (fewer than 3 points, or all collinear), which qhull rejects.
    """
    from scipy.spatial import ConvexHull
    from scipy.spatial import QhullError

    pts = points.detach().double().cpu().numpy()
    if pts.shape[0] < 3:
        return 0.0
    try:
        return float(ConvexHull(pts).volume)
    except QhullError:
        return 0.0


def movement_scale(kp_source: KPDict, kp_driving_initial: KPDict) -> torch.Tensor:
    """(B,) float: sqrt(area(kp_source)) / sqrt(area(kp_driving_initial)) per sample.

    The official code computes it from sample 0 only and applies it to the whole batch; per sample is the
    same for batch 1 (the demo) and right for batches of different people. A degenerate hull gives 1.
    """
    src, ini = kp_source["value"], kp_driving_initial["value"]
    scales = []
    for b in range(src.shape[0]):
        a_src, a_ini = convex_hull_area(src[b]), convex_hull_area(ini[b])
        if a_src <= 0 or a_ini <= 0:
            warnings.warn("degenerate keypoint convex hull; using movement scale 1", RuntimeWarning)
            scales.append(1.0)
        else:
            scales.append(math.sqrt(a_src) / math.sqrt(a_ini))
    return torch.tensor(np.asarray(scales), dtype=src.dtype, device=src.device)


def normalize_kp(
    kp_source: KPDict,
    kp_driving: KPDict,
    kp_driving_initial: Optional[KPDict] = None,
    adapt_movement_scale: bool = False,
    use_relative_movement: bool = False,
    use_relative_jacobian: bool = False,
) -> KPDict:
    """The keypoints to drive the generator with (FOMM's `animate.normalize_kp`, same arguments).

    kp_source (B, K, ...) from the source image, kp_driving from the current driving frame,
    kp_driving_initial from the first (or best-matching) driving frame; needed for relative motion or
    the scale. Returns a new dict; inputs are not modified.
    """
    needs_initial = use_relative_movement or adapt_movement_scale
    if needs_initial and kp_driving_initial is None:
        raise ValueError("relative motion and adapt_movement_scale need kp_driving_initial")
    out = dict(kp_driving)
    if not use_relative_movement:
        return out
    diff = kp_driving["value"] - kp_driving_initial["value"]
    if adapt_movement_scale:
        diff = diff * movement_scale(kp_source, kp_driving_initial).view(-1, 1, 1)
    out["value"] = diff + kp_source["value"]
    if use_relative_jacobian and kp_driving.get("jacobian") is not None:
        rel = torch.matmul(kp_driving["jacobian"], torch.inverse(kp_driving_initial["jacobian"]))
        out["jacobian"] = torch.matmul(rel, kp_source["jacobian"])
    return out


def transfer_motion(
    kp_source: KPDict,
    kp_driving: KPDict,
    kp_driving_initial: Optional[KPDict] = None,
    mode: str = "relative",
    adapt_movement_scale: bool = True,
) -> KPDict:
    """`mode="relative"` (movement and jacobians relative to `kp_driving_initial`, optional scale) or
    `mode="absolute"` (driving keypoints unchanged). The animate command's entry point."""
    if mode not in MOTION_MODES:
        raise ValueError(f"unknown motion mode {mode!r}; expected one of {MOTION_MODES}")
    if mode == "absolute":
        return dict(kp_driving)
    return normalize_kp(
        kp_source,
        kp_driving,
        kp_driving_initial,
        adapt_movement_scale=adapt_movement_scale,
        use_relative_movement=True,
        use_relative_jacobian=True,
    )


def expand_kp(kp: KPDict, batch: int) -> KPDict:
    """Repeat a batch-1 keypoint dict to `batch` samples (e.g. kp_source for a chunk of driving frames)."""
    return {k: v.expand(batch, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in kp.items()}
