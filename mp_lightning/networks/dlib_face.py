"""dlib's face recognition network (ResNet, 128-d descriptor, 99.38% on LFW) with its own detector and
5-point alignment, from the dlib-bin wheel and the models of `face-recognition-models` (the `metrics` extra).

`face_recognition_models/__init__.py` imports `pkg_resources`, which recent setuptools no longer has, so
the model files are located from the package's install path without importing it.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mp_lightning.networks.optional_imports import INSTALL_HINT

MODEL_FILES = {
    "shape_predictor": "shape_predictor_5_face_landmarks.dat",
    "recognition": "dlib_face_recognition_resnet_model_v1.dat",
}


def model_path(kind: str) -> str:
    """Path of a face-recognition-models file, found without running the package's __init__."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        from mp_lightning.errors import MissingWeightsError

        raise MissingWeightsError(f"face-recognition-models is not installed; {INSTALL_HINT}")
    path = os.path.join(os.path.dirname(spec.origin), "models", MODEL_FILES[kind])
    if not os.path.isfile(path):
        from mp_lightning.errors import MissingWeightsError

        raise MissingWeightsError(f"{path} is missing: reinstall face-recognition-models ({INSTALL_HINT})")
    return path


@functools.lru_cache(maxsize=1)
def dlib_unavailable_reason() -> Optional[str]:
    """Why the dlib identity metrics cannot run here (None when they can)."""
    if importlib.util.find_spec("dlib") is None:
        return f"dlib identity metrics skipped: dlib is not installed; {INSTALL_HINT}"
    try:
        for kind in MODEL_FILES:
            model_path(kind)
    except FileNotFoundError as err:
        return f"dlib identity metrics skipped: {err}"
    return None


class DlibFaceEmbedder:
    """Face descriptors as dlib computes them: HOG frontal-face detector, 5-point shape predictor, then the
    ResNet on the aligned 150 px chip (dlib's `compute_face_descriptor(image, shape)`).

    Args:
        detect_size: frames whose shorter side is below this are upscaled (bilinear) first; the HOG
            detector misses faces much smaller than 80 px.
        upsample: dlib's own detector pyramid upsampling (0 = none).

    __call__(x (B, 3, H, W) in [0, 1]) -> (descriptors (B, 128) float32, found (B,) bool). Frames in which
    no face is found get a zero descriptor and found=False: callers leave them out and count them.
    When several faces are found the one with the highest detector score is used. Not differentiable.
    """

    def __init__(self, detect_size: int = 192, upsample: int = 0):
        reason = dlib_unavailable_reason()
        if reason is not None:
            from mp_lightning.errors import MissingWeightsError

            raise MissingWeightsError(reason)
        import dlib

        self.detect_size = detect_size
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(model_path("shape_predictor"))
        self.recognition = dlib.face_recognition_model_v1(model_path("recognition"))

    def to_uint8(self, x: Tensor) -> np.ndarray:
        """(B, 3, H, W) in [0, 1] -> (B, H', W', 3) uint8 RGB, upscaled to `detect_size` when smaller."""
        x = x.detach().float().clamp(0, 1)
        short = min(x.shape[-2:])
        if short < self.detect_size:
            scale = self.detect_size / short
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False).clamp(0, 1)
        return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def describe(self, image: np.ndarray) -> Optional[np.ndarray]:
        """One (H, W, 3) uint8 RGB image -> its (128,) descriptor, or None when no face is found."""
        rects, scores, _ = self.detector.run(image, self.upsample, 0.0)
        if len(rects) == 0:
            return None
        best = rects[int(np.argmax(scores))]
        shape = self.shape_predictor(image, best)
        return np.asarray(self.recognition.compute_face_descriptor(image, shape), dtype=np.float32)

    def __call__(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        images = self.to_uint8(x)
        out = torch.zeros(len(images), 128)
        found = torch.zeros(len(images), dtype=torch.bool)
        for i, image in enumerate(images):
            descriptor = self.describe(np.ascontiguousarray(image))
            if descriptor is not None:
                out[i] = torch.from_numpy(descriptor)
                found[i] = True
        return out.to(x.device), found.to(x.device)
