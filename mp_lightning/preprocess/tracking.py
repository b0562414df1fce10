"""Face detection (facenet-pytorch MTCNN), linking detections into tracks, and the square crop box.

The recipe follows FOMM's VoxCeleb cropping (``crop_vox.py``): link per-frame boxes into tubes, cut a
tube where the face is lost, jumps, or drifts too far from where the tube started, drop short tubes,
and crop every frame of a tube with ONE static square box (the union of its boxes, enlarged). A static
box keeps camera and background still inside a clip, like the VoxCeleb crops the models were designed
for; the face moves inside it.

Speed: MTCNN runs on frames downscaled to at most ``max_side`` pixels, and only on every ``every``-th
frame (plus the last); boxes in between are linearly interpolated. The boxes only choose the static
crop and decide where tracks split, and the crop is enlarged well beyond the face, so interpolated boxes
are accurate enough; the landmarks are detected on every cropped frame.

All boxes are ``[x0, y0, x1, y1]`` in pixels of the full-resolution frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Crop side = max side of the union of the track's boxes + (ENLARGE - 1) * the median face box side.
#: MTCNN boxes span brows to chin; 1.8x keeps the whole head, hair and a bit of neck, like VoxCeleb crops.
ENLARGE = 1.8
#: The crop centre is moved up by this fraction of the median box height: MTCNN boxes start at the
#: brows, so the head's centre lies above the box centre.
SHIFT_UP = 0.1
#: A detection continues a track when its IoU with the track's last box is at least this (else: a jump).
IOU_LINK = 0.3
#: A clip is cut when the face's IoU with the clip's first box drops below this (FOMM's value), so one
#: static crop box stays valid for the whole clip.
IOU_WITH_INITIAL = 0.25
#: Faces whose MTCNN probability is below this are ignored.
MIN_PROB = 0.9


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (N, 4) and b (M, 4) -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class FaceDetector:
    """MTCNN on downscaled frames. ``detect(frames)`` -> per frame (boxes (N, 4) full-res px, probs (N,))."""

    def __init__(self, max_side: int = 480, min_face_size: int = 20, min_prob: float = MIN_PROB, batch: int = 8):
        import torch
        from facenet_pytorch import MTCNN

        self.max_side = int(max_side)
        self.min_prob = float(min_prob)
        self.batch = int(batch)
        self._torch = torch
        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, device="cpu")

    def detect(self, frames) -> list[tuple[np.ndarray, np.ndarray]]:
        """frames: (T, H, W, 3) uint8 RGB (or a list of same-sized frames)."""
        import cv2

        frames = list(frames)
        if not frames:
            return []
        h, w = frames[0].shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        else:
            small = frames
        out = []
        with self._torch.no_grad():
            for i in range(0, len(small), self.batch):
                chunk = np.stack(small[i:i + self.batch])
                boxes, probs = self.mtcnn.detect(chunk)
                for b, p in zip(boxes, probs):
                    if b is None:
                        out.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))
                        continue
                    b = np.asarray(b, np.float32).reshape(-1, 4) / scale
                    p = np.asarray(p, np.float32).reshape(-1)
                    keep = p >= self.min_prob
                    out.append((b[keep], p[keep]))
        return out


@dataclass
class Track:
    """A face followed over keyframes; ``dense()`` interpolates its box to every frame in between."""

    keyframes: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    end_reason: str = "video ended"

    @property
    def start(self) -> int:
        return self.keyframes[0]

    @property
    def stop(self) -> int:
        """One past the last frame."""
        return self.keyframes[-1] + 1

    def dense(self) -> np.ndarray:
        """(stop - start, 4) boxes, linear between keyframes."""
        kf = np.asarray(self.keyframes)
        bx = np.stack(self.boxes).astype(np.float64)
        t = np.arange(self.start, self.stop)
        return np.stack([np.interp(t, kf, bx[:, j]) for j in range(4)], 1)


def link_tracks(
    detections: list[tuple[int, np.ndarray, np.ndarray]], max_gap: int, iou_link: float = IOU_LINK
) -> list[Track]:
    """Greedy IoU linking of keyframe detections ``[(frame, boxes (N,4), probs (N,)), ...]`` (ascending frames).

    A track continues with the detection of highest IoU (>= iou_link) with its last box; it ends when
    no detection matched for more than ``max_gap`` frames (face lost) or when its face reappears
    elsewhere (a jump: the new detection starts a new track).
    """
    active: list[Track] = []
    done: list[Track] = []
    for frame, boxes, probs in detections:
        still = []
        for tr in active:
            if frame - tr.keyframes[-1] > max_gap:
                done.append(tr)
            else:
                still.append(tr)
        active = still
        used = set()
        if active and len(boxes):
            m = iou(np.stack([t.boxes[-1] for t in active]), boxes)
            for flat in np.argsort(-m, axis=None):
                ti, di = np.unravel_index(flat, m.shape)
                if m[ti, di] < iou_link:
                    break
                if ti in used or ("d", di) in used:
                    continue
                used.add(ti)
                used.add(("d", di))
                active[ti].keyframes.append(frame)
                active[ti].boxes.append(boxes[di])
                active[ti].probs.append(float(probs[di]))
        new_faces = any(("d", di) not in used for di in range(len(boxes)))
        for ti, tr in enumerate(active):
            # unmatched while an unmatched face appeared: if this track never resumes, the face jumped
            if ti in used:
                tr.end_reason = "video ended"
            elif tr.end_reason == "video ended":  # first keyframe it missed decides why it ends
                tr.end_reason = "face jumped" if new_faces else "face lost"
        for di in range(len(boxes)):
            if ("d", di) not in used:
                active.append(Track([frame], [boxes[di]], [float(probs[di])]))
    done.extend(active)
    return sorted(done, key=lambda t: (t.start, t.keyframes[-1]))


@dataclass
class Chunk:
    """A piece of a track that becomes one clip: frames [start, stop) cropped with one square box."""

    start: int
    stop: int
    boxes: np.ndarray  # (stop - start, 4) per-frame face boxes (interpolated)
    crop: tuple[float, float, float]  # (x0, y0, side) of the square crop, full-res pixels
    track: int = 0

    def __len__(self) -> int:
        return self.stop - self.start


def split_track(
    track: Track, max_frames: int, iou_with_initial: float = IOU_WITH_INITIAL
) -> list[tuple[int, int, np.ndarray]]:
    """Cut a track into pieces [(start, stop, boxes)] where the face drifts from the piece's first box
    (IoU < iou_with_initial) or the piece reaches max_frames (FOMM's tubes)."""
    boxes = track.dense()
    pieces = []
    s = 0
    for t in range(1, len(boxes) + 1):
        if t == len(boxes) or t - s >= max_frames or iou(boxes[s], boxes[t])[0, 0] < iou_with_initial:
            pieces.append((track.start + s, track.start + t, boxes[s:t]))
            s = t
    return pieces


def crop_box(boxes: np.ndarray, enlarge: float = ENLARGE, shift_up: float = SHIFT_UP) -> tuple[float, float, float]:
    """Static square crop (x0, y0, side) for face boxes (N, 4): union side + (enlarge - 1) * median face side,
    centred on the union, moved up by shift_up * median face height."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ux0, uy0 = boxes[:, 0].min(), boxes[:, 1].min()
    ux1, uy1 = boxes[:, 2].max(), boxes[:, 3].max()
    fw = np.median(boxes[:, 2] - boxes[:, 0])
    fh = np.median(boxes[:, 3] - boxes[:, 1])
    side = max(ux1 - ux0, uy1 - uy0) + (enlarge - 1) * max(fw, fh)
    cx = (ux0 + ux1) / 2
    cy = (uy0 + uy1) / 2 - shift_up * fh
    return float(cx - side / 2), float(cy - side / 2), float(side)


def crop_frame(frame: np.ndarray, crop: tuple[float, float, float], size: int) -> np.ndarray:
    """Cut the square ``crop`` (x0, y0, side) out of (H, W, 3) uint8, replicating the border where it
    leaves the frame, and resize to (size, size, 3) (area filter when shrinking)."""
    import cv2

    x0, y0, side = crop
    ix0, iy0 = int(round(x0)), int(round(y0))
    iside = max(1, int(round(side)))
    h, w = frame.shape[:2]
    pad_l, pad_t = max(0, -ix0), max(0, -iy0)
    pad_r, pad_b = max(0, ix0 + iside - w), max(0, iy0 + iside - h)
    if pad_l or pad_t or pad_r or pad_b:
        frame = cv2.copyMakeBorder(frame, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE)
    patch = frame[iy0 + pad_t: iy0 + pad_t + iside, ix0 + pad_l: ix0 + pad_l + iside]
    interp = cv2.INTER_AREA if iside > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)


def to_crop_coords(points_px: np.ndarray, crop: tuple[float, float, float]) -> np.ndarray:
    """Pixel coordinates of the full frame (continuous, 0 = left edge) -> [0, 1] of the crop.

    Uses the same integer box as :func:`crop_frame`, so points land exactly where the pixels went.
    """
    x0, y0, side = crop
    ix0, iy0, iside = int(round(x0)), int(round(y0)), max(1, int(round(side)))
    pts = np.asarray(points_px, np.float64)
    return np.stack([(pts[..., 0] - ix0) / iside, (pts[..., 1] - iy0) / iside], -1).astype(np.float32)
