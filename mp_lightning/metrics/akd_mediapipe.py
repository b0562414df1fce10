"""AKD's landmark detector offline: mediapipe's face mesh (the detector `preprocess` uses), run on the
prediction and on the ground-truth frame alike, so the distance does not depend on which detector made the
data's landmarks. FOMM's AKD uses face-alignment's 2D-FAN, whose weights cannot be installed offline; the
numbers are therefore AKD under another detector (the metric table says so), not comparable with FOMM's."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

MEDIAPIPE = "mediapipe"  # the value of metrics.akd.detector that selects this detector


def mediapipe_unavailable_reason() -> Optional[str]:
    """Why the mediapipe face mesh cannot run here (None when it can)."""
    try:
        from mp_lightning.preprocess.landmark_sources import import_mediapipe

        import_mediapipe()
    except Exception as err:  # not installed, or its protobuf clash: say so instead of failing the run
        return (f"AKD skipped: mediapipe's face mesh is unavailable ({type(err).__name__}: {err}); install it with"
                " `pip install --no-deps mediapipe==0.10.21` (README set-up)")
    return None


class MediaPipeKeypoints:
    """(B, 3, H, W) in [0, 1] -> (B, 478, 2) in [0, 1] (x right, y down); NaN rows where no face was found."""

    def __init__(self):
        from mp_lightning.preprocess.landmark_sources import MediaPipeMesh

        self.mesh = MediaPipeMesh(refine_landmarks=True)

    def __call__(self, images: Tensor) -> Tensor:
        frames = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        frames = frames.permute(0, 2, 3, 1).cpu().numpy()
        points = self.mesh.detect_raw(np.ascontiguousarray(frames), video=False)  # still images: no tracking
        return torch.from_numpy(points).to(images.device)
