"""Per-frame motion descriptors ("semantics", PIRender's 3DMM coefficients) as data.

A clip's descriptors are ``<clip>.semantics.npy`` beside it: float32 ``(F, 73)``, one row per frame,
channels in the official PIRender order (BASELINES.md 2.2):

====================  ========  ================================================================
channels              count     meaning
====================  ========  ================================================================
0-63                  64        expression coefficients
64-66                 3         rotation angles (radians; about x, y, z as Deep3DFaceRecon)
67-69                 3         translation
70-72                 3         crop parameters (ratio, t0, t1; the translations in pixels)
====================  ========  ================================================================

``ROOT/semantics.json`` says which extractor made them, ``{"kind": ..., "dim": 73}``: the official
weights expect ``deep3dfacerecon``; ``mediapipe`` is the stand-in of ``mp-lightning preprocess``;
``synthetic`` holds the exact generating parameters of the synthetic writer's faces. A model
records the kind it was trained on and refuses data of another kind.

The network input for frame ``t`` is the window of frames ``t - r ... t + r`` (indices clamped to the
clip), transposed to ``(73, 2r + 1)`` (official ``semantic_radius`` r = 13 -> 27 frames).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from datamodules.clips import read_json
from mp_lightning.errors import DataError

SEMANTICS_DIM = 73
SEMANTICS_SUFFIX = ".semantics.npy"
SEMANTICS_JSON = "semantics.json"
EXPRESSION = slice(0, 64)
ANGLES = slice(64, 67)
TRANSLATION = slice(67, 70)
CROP = slice(70, 73)
KINDS = ("deep3dfacerecon", "mediapipe", "synthetic")

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")


def semantics_path_for(clip_path: str | Path) -> Path:
    """``<clip>.semantics.npy`` beside a clip video (suffix dropped) or frame folder."""
    clip_path = Path(clip_path)
    base = clip_path.with_suffix("") if clip_path.suffix.lower() in VIDEO_SUFFIXES else clip_path
    return base.parent / f"{base.name}{SEMANTICS_SUFFIX}"


def load_semantics_description(root: str | Path) -> dict | None:
    """``ROOT/semantics.json`` (``{"kind": str, "dim": 73, ...}``) or None when the root has none."""
    path = Path(root) / SEMANTICS_JSON
    if not path.is_file():
        return None
    desc = read_json(path)
    if not isinstance(desc, dict) or not isinstance(desc.get("kind"), str) or desc.get("dim") != SEMANTICS_DIM:
        raise DataError(f'{path}: expected an object with "kind" (one of {", ".join(KINDS)}) and "dim": {SEMANTICS_DIM}')
    return desc


def write_semantics_description(root: str | Path, kind: str, **extra) -> Path:
    path = Path(root) / SEMANTICS_JSON
    path.write_text(json.dumps({"kind": kind, "dim": SEMANTICS_DIM, **extra}, indent=1) + "\n")
    return path


def check_semantics_file(path: str | Path, num_frames: int) -> None:
    """Raise ValueError naming the file unless it is a finite float (num_frames, 73) array."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing motion descriptors {path.name} (data.semantics is set)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"unreadable motion descriptors {path.name} ({err})") from None
    if arr.ndim != 2 or arr.shape[1] != SEMANTICS_DIM:
        raise ValueError(f"motion descriptors {path.name} have shape {tuple(arr.shape)}, expected (F, {SEMANTICS_DIM})")
    if arr.shape[0] != num_frames:
        raise ValueError(f"motion descriptors {path.name} have {arr.shape[0]} rows, the clip has {num_frames} frames")
    if not np.isfinite(np.asarray(arr, dtype=np.float32)).all():
        raise ValueError(f"motion descriptors {path.name} contain NaN/inf")


def window_indices(center: int, num_frames: int, radius: int) -> np.ndarray:
    """Frames center-r ... center+r clamped to [0, num_frames - 1] (official `obtain_seq_index`)."""
    return np.clip(np.arange(center - radius, center + radius + 1), 0, num_frames - 1)


def semantic_window(semantics: np.ndarray, center: int, radius: int) -> np.ndarray:
    """(F, 73) descriptors -> float32 (73, 2r + 1) window centred on frame `center`."""
    idx = window_indices(int(center), semantics.shape[0], radius)
    return np.ascontiguousarray(np.asarray(semantics[idx], dtype=np.float32).T)


def semantic_windows(semantics: np.ndarray, radius: int) -> np.ndarray:
    """Every frame's window: (F, 73) -> (F, 73, 2r + 1) (animation of a whole clip)."""
    return np.stack([semantic_window(semantics, t, radius) for t in range(semantics.shape[0])])


def synthetic_semantics(motion, size: int) -> np.ndarray:
    """Exact descriptors (F, 73) of a synthetic clip, from the parameters it was rendered with.

    Expression: mouth opening, eye opening (image left, right), gaze (x, y) in channels 0-4, the rest 0.
    Angles: pitch, yaw, roll (radians; rotations about x, y, z). Translation: tx, ty (fractions of the
    frame) and scale - 1. Crop: scale and the head centre in pixels at `size`, the official crop
    parameters' (ratio, t0, t1) roles.
    """
    n = len(motion.yaw)
    out = np.zeros((n, SEMANTICS_DIM), np.float32)
    out[:, 0] = motion.mouth
    out[:, 1:3] = motion.eye_open
    out[:, 3:5] = motion.gaze
    out[:, ANGLES] = np.stack([motion.pitch, motion.yaw, motion.roll], 1)
    out[:, TRANSLATION] = np.stack([motion.tx, motion.ty, motion.scale - 1], 1)
    out[:, CROP] = np.stack([motion.scale, size * (0.5 + motion.tx), size * (0.47 + motion.ty)], 1)
    return out


def attach_semantics(scan) -> None:
    """Check every usable clip of a `SplitScan` for its descriptor file (rows = frame count) and record
    its path; a clip without a valid one moves to `scan.bad` with the reason (naming the file)."""
    kept = []
    for clip in scan.clips:
        path = semantics_path_for(clip.path)
        try:
            check_semantics_file(path, clip.num_frames)
        except ValueError as err:
            scan.bad.append({"clip": clip.name, "path": str(path), "reason": str(err)})
            continue
        clip.semantics_path = str(path)
        kept.append(clip)
    scan.clips[:] = kept
