"""On-the-fly preparation of a user's photo and raw driving video for `mp-lightning animate`.

Both use the same crop rule as :mod:`.pipeline` (MTCNN box -> square box enlarged by
``tracking.ENLARGE``, moved up by ``tracking.SHIFT_UP``), so a photo is framed like the training clips.
"Aligned" means exactly that: same scale and centring as the training crops. The crop is not rotated,
because the training clips are not either.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mp_lightning.errors import DataError
from mp_lightning.preprocess import tracking
from mp_lightning.preprocess.landmark_sources import fill_missing, make_source, smooth_landmarks


def _read_image(path) -> np.ndarray:
    if isinstance(path, np.ndarray):
        return path
    import cv2

    path = Path(path)
    if not path.is_file():
        raise DataError(f"source photo not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def prepare_source_photo(path, size: int = 256, landmarks: str = "mediapipe", detect_size: int = 1024) -> dict:
    """Detect the largest face in a photo, crop it like the training clips and detect its landmarks.

    path: image file (or an (H, W, 3) uint8 RGB array). Returns dict(image (3, S, S) float32 tensor in
    [0, 1], landmarks (K, 2) float32 in [0, 1] of the crop, spec (landmarks.json dict), box (face box
    [x0, y0, x1, y1] in photo pixels), crop (x0, y0, side) in photo pixels).
    """
    image = _read_image(path)
    boxes, probs = tracking.FaceDetector(max_side=detect_size).detect([image])[0]
    if len(boxes) == 0:
        raise DataError(f"{path if not isinstance(path, np.ndarray) else 'image'}: no face found (MTCNN)")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    box = boxes[int(np.argmax(areas))]
    crop = tracking.crop_box(box[None])
    face = tracking.crop_frame(image, crop, size)
    source = make_source(landmarks)
    if source is None:
        raise DataError("prepare_source_photo needs a landmark detector (landmarks='mediapipe' or 'mediapipe68')")
    try:
        lms = source.detect_raw(face[None], video=False)[0]
    finally:
        source.close()
    if not np.isfinite(lms).all():
        raise DataError(f"{path if not isinstance(path, np.ndarray) else 'image'}: the landmark detector found no face in the crop")
    return {
        "image": torch.from_numpy(face).permute(2, 0, 1).float() / 255.0,
        "landmarks": lms.astype(np.float32),
        "spec": source.spec(),
        "box": [float(v) for v in box],
        "crop": crop,
    }


def prepare_driving_video(
    path,
    size: int = 256,
    landmarks: str = "mediapipe",
    every: int = 5,
    smooth: str = "none",
    max_frames: int | None = None,
    max_missing: float = 0.5,
) -> dict:
    """Preprocess a raw driving video on the fly: the longest face track, one static crop, landmarks.

    Returns dict(frames (T, 3, S, S) float32 tensor in [0, 1], landmarks (T, K, 2) float32 in [0, 1],
    spec, frame_indices (T,) indices into the raw video, fps, crop (x0, y0, side)). T is the length of the
    longest track (ties: the larger face), cut to max_frames. Frames where the landmark detector
    misses the face are interpolated; more than max_missing of them raises DataError.
    """
    from mp_lightning.io.video import video_fps
    from mp_lightning.preprocess.pipeline import crop_chunks, scan_faces

    path = Path(path)
    if not path.is_file():
        raise DataError(f"driving video not found: {path}")
    scan = scan_faces(path, tracking.FaceDetector(), every)
    tracks = tracking.link_tracks(scan["detections"], max_gap=2 * max(1, every))
    if not tracks:
        raise DataError(f"{path}: no face found in the driving video")

    def score(t):
        b = np.stack(t.boxes)
        return (t.stop - t.start, float(np.mean((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))))

    best = max(tracks, key=score)
    boxes = best.dense()
    stop = best.stop if not max_frames else min(best.stop, best.start + int(max_frames))
    boxes = boxes[: stop - best.start]
    chunk = tracking.Chunk(best.start, stop, boxes, tracking.crop_box(boxes))
    crops = next(c for _, c in crop_chunks(path, [chunk], size))
    source = make_source(landmarks)
    if source is None:
        raise DataError("prepare_driving_video needs a landmark detector (landmarks='mediapipe' or 'mediapipe68')")
    try:
        raw = source.detect_raw(crops, video=True)
    finally:
        source.close()
    found = np.isfinite(raw).all(axis=(1, 2))
    if found.sum() < (1 - max_missing) * len(raw):
        raise DataError(f"{path}: landmarks found on only {int(found.sum())}/{len(raw)} frames of the face track")
    fps = video_fps(path)
    lms = smooth_landmarks(fill_missing(raw)[0], smooth, fps=fps)
    return {
        "frames": torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0,
        "landmarks": lms.astype(np.float32),
        "spec": source.spec(),
        "frame_indices": np.arange(chunk.start, chunk.start + len(crops)),
        "fps": fps,
        "crop": chunk.crop,
    }
