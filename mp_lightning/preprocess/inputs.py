"""Reading a source portrait and a driving video (with their landmarks) for animation.

Landmarks come from the `.landmarks.npy` file beside an image or clip (our data layout). A raw photo or
video without one goes through the preprocessing pipeline (face detection, crop, landmark detector).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mp_lightning.errors import DataError

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else is returned as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _landmarks_beside(path: Path) -> Path:
    return path.with_name(path.name.rsplit(".", 1)[0] + ".landmarks.npy")


def identity_beside(path: str | Path) -> Path:
    """`<name>.identity.npy` beside an image or clip: its precomputed identity embedding (our data layout)."""
    path = Path(path)
    return path.with_name(path.name.rsplit(".", 1)[0] + ".identity.npy")


def load_source_inputs(stage, source: str | Path, source_identity: str | Path | None = None) -> dict:
    """The batch entries (leading axis 1) that `stage` needs of a source beyond image and landmarks.

    `source_identity`: the file given by the user (`--source-identity`), else `<source>.identity.npy`.
    """
    inputs = {}
    for key in stage.source_inputs():
        if key != "source_identity":
            raise DataError(f"no loader for the source input '{key}' that {type(stage).__name__} asks for")
        path = Path(source_identity) if source_identity else identity_beside(source)
        if not path.is_file():
            given = f"--source-identity {path} does not exist" if source_identity else f"no {path.name} beside {source}"
            raise DataError(
                f"this checkpoint conditions on a precomputed source identity (model.identity.source=precomputed,"
                f" e.g. the official MetaPortrait weights): {given}; pass --source-identity FILE.npy"
                f" or put <source>.identity.npy beside the source"
            )
        vector = np.load(path).astype(np.float32).reshape(-1)
        if not np.isfinite(vector).all():
            raise DataError(f"{path}: the identity embedding holds NaN or inf")
        inputs["source_identity"] = torch.from_numpy(vector)[None]
    return inputs


def _to_tensor(frames: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    if t.shape[-1] != size or t.shape[-2] != size:
        t = F.interpolate(t, size=(size, size), mode="area")
    return t


def _read_landmarks(path: Path, frames: int | None) -> np.ndarray:
    lm = np.load(path).astype(np.float32)
    if lm.ndim == 2:
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[-1] != 2:
        raise DataError(f"{path}: landmarks must be (F, K, 2) or (K, 2), got {lm.shape}")
    if frames is not None and lm.shape[0] < frames:
        raise DataError(f"{path}: {lm.shape[0]} landmark frames for a {frames}-frame video")
    if not np.isfinite(lm).all():
        raise DataError(f"{path}: landmarks contain NaN or inf")
    return lm


def load_source(path: str | Path, size: int, frame: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Source image (3, size, size) in [0, 1] and its landmarks (K, 2) in [0, 1]."""
    from mp_lightning.io.video import read_video

    path = Path(path)
    if not path.is_file():
        raise DataError(f"source not found: {path}")
    lm_path = _landmarks_beside(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        frames = read_video(path)
        if frame >= len(frames):
            raise DataError(f"{path}: --source-frame {frame} but the clip has {len(frames)} frames")
        if not lm_path.is_file():
            raise DataError(f"{path}: no landmarks file {lm_path.name} beside the clip")
        lm = _read_landmarks(lm_path, len(frames))[frame]
        return _to_tensor(frames[frame:frame + 1], size)[0], torch.from_numpy(lm)
    if lm_path.is_file():
        import cv2

        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return _to_tensor(image[None], size)[0], torch.from_numpy(_read_landmarks(lm_path, None)[0])
    from mp_lightning.preprocess import prepare_source_photo

    prepared = prepare_source_photo(path, size=size)
    return prepared["image"], torch.as_tensor(prepared["landmarks"])


def load_driving(path: str | Path, size: int, max_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Driving frames (T, 3, size, size) in [0, 1] and landmarks (T, K, 2) in [0, 1]."""
    from mp_lightning.io.video import read_video

    path = Path(path)
    if not path.is_file():
        raise DataError(f"driving video not found: {path}")
    lm_path = _landmarks_beside(path)
    if lm_path.is_file():
        frames = read_video(path)
        if len(frames) == 0:
            raise DataError(f"{path}: no decodable frames")
        lm = _read_landmarks(lm_path, len(frames))[: len(frames)]
        if max_frames:
            frames, lm = frames[:max_frames], lm[:max_frames]
        return _to_tensor(frames, size), torch.from_numpy(lm)
    from mp_lightning.preprocess import prepare_driving_video

    prepared = prepare_driving_video(path, size=size)
    frames, lm = prepared["frames"], torch.as_tensor(prepared["landmarks"])
    if max_frames:
        frames, lm = frames[:max_frames], lm[:max_frames]
    return frames, lm
