"""Average keypoint distance (AKD) and its offline landmark detector.

AKD's landmark detector offline: mediapipe's face mesh (the detector `preprocess` uses), run on the
prediction and on the ground-truth frame alike, so the distance does not depend on which detector made the
data's landmarks. FOMM's AKD uses face-alignment's 2D-FAN, whose weights cannot be installed offline; the
numbers are therefore AKD under another detector (the metric table says so), not comparable with FOMM's.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from mp_lightning.metrics.base import MeanMetric

LandmarkDetector = Callable[[Tensor], Tensor]  # (B, 3, H, W) in [0, 1] -> (B, K, 2) in [0, 1]
MEDIAPIPE = "mediapipe"  # the value of metrics.akd.detector that selects this detector


class AKD(MeanMetric):
    """Average keypoint distance: mean Euclidean distance in pixels between the landmarks of the
    prediction and those of the driving frame.

    Landmarks are (B, K, 2) in [0, 1] of the frame (x right, y down), as in the data contract. The
    prediction's landmarks come from one of:
      - `pred_landmarks` passed to `update` (a stage that outputs them, e.g. `prediction_landmarks`, or
        landmarks precomputed offline with whatever produced the data's landmarks);
      - the `detector` callable given here, (B, 3, H, W) in [0, 1] -> (B, K, 2) in [0, 1], run on `preds`.
    `target_landmarks` are the driving frame's landmarks from the same source as the data's.
    Points with a non-finite coordinate in either set (a missed detection) are left out.

    Args:
        detector: optional landmark detector for predictions.
        image_size: report pixels at this side length (FOMM reports at 256); None = the image's own size.

    update(target_landmarks, pred_landmarks=None, preds=None, image_size=None): image_size (H, W) is
    needed only when neither `preds` nor the constructor's image_size gives the pixel scale.
    """

    higher_is_better = False

    def __init__(self, detector: Optional[LandmarkDetector] = None, image_size: Optional[int] = None,
                 detect_target: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self._hold_frozen("detector", detector)
        self.image_size = image_size
        self.detect_target = detect_target  # the detector also finds the target's landmarks (`update_detected`)

    def update_detected(self, preds: Tensor, targets: Tensor) -> Tensor:
        """The detector on both the predictions and the ground-truth frames (B, 3, H, W); returns (B,) bool:
        a face found in both (pairs without are left out of the mean and counted by the caller)."""
        with torch.no_grad():
            pred_landmarks = self.detector(preds.float())
            target_landmarks = self.detector(targets.float())
        found = pred_landmarks.flatten(1).isfinite().all(1) & target_landmarks.flatten(1).isfinite().all(1)
        if bool(found.any()):
            self.update(target_landmarks[found], pred_landmarks[found], preds=preds[found])
        return found.to(self.total.device)

    def update(
        self,
        target_landmarks: Tensor,
        pred_landmarks: Optional[Tensor] = None,
        preds: Optional[Tensor] = None,
        image_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        if pred_landmarks is None:
            if self.detector is None or preds is None:
                raise ValueError("AKD: pass pred_landmarks, or construct with a detector and pass preds")
            with torch.no_grad():
                pred_landmarks = self.detector(preds.float())
        if pred_landmarks.shape != target_landmarks.shape or pred_landmarks.shape[-1] != 2:
            raise ValueError(
                f"AKD: landmarks must both be (B, K, 2), got {tuple(pred_landmarks.shape)} and "
                f"{tuple(target_landmarks.shape)}"
            )
        if self.image_size is not None:
            h = w = self.image_size
        elif preds is not None:
            h, w = preds.shape[-2:]
        elif image_size is not None:
            h, w = image_size
        else:
            raise ValueError("AKD: the pixel scale is unknown: pass preds or image_size, or set AKD(image_size=...)")
        scale = torch.tensor([w, h], dtype=torch.float64, device=target_landmarks.device)
        diff = (pred_landmarks.double() - target_landmarks.double()) * scale
        dist = diff.norm(dim=-1)
        self._accumulate(dist[torch.isfinite(dist)])


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
