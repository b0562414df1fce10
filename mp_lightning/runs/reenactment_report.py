"""Self- and cross-identity reenactment of test portraits, with the videos, a grid and offline metrics.

What the quickstart shows after training, and what `benchmarks/quickstart_quality.py` measures:
- a test portrait (frame 0 of an identity's clip) driven by another clip of the same identity
  (self-reenactment: the driving frames are the ground truth) and by another test identity's clip
  (cross-identity: no ground truth, the field's actual task);
- ST-LPIPS of the prediction and of "copy the source frame" against the driving frame, over the whole
  frame and inside the face (the convex hull of the driving frame's landmarks);
- dlib identity similarity of the prediction to the source, self and cross, beside what dlib gives two
  frames of one person and frames of two people on the test split (`identity_check`): the scale on which a
  prediction's similarity means something.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor


@dataclass
class Clip:
    path: Path
    identity: str


def test_clips(data_root: str | Path) -> List[Clip]:
    """Every clip of `<root>/test` with landmarks beside it, sorted, with its identity folder name."""
    root = Path(data_root) / "test"
    return [Clip(p, p.relative_to(root).parts[0]) for p in sorted(root.rglob("*.mp4"))
            if p.with_suffix(".landmarks.npy").is_file()]


def choose_portraits(clips: List[Clip]) -> Dict[str, Clip]:
    """The source clip, a self-driving clip (same identity, another video when there is one) and a
    cross-driving clip (the next test identity)."""
    identities = sorted({c.identity for c in clips})
    if len(identities) < 2:
        from mp_lightning.errors import DataError

        raise DataError("cross-identity reenactment needs at least two test identities")
    source = next(c for c in clips if c.identity == identities[0])
    own = [c for c in clips if c.identity == source.identity and c.path != source.path]
    other_video = [c for c in own if c.path.parent != source.path.parent]
    driving_self = (other_video or own or [source])[0]
    driving_cross = next(c for c in clips if c.identity == identities[1])
    return {"source": source, "self": driving_self, "cross": driving_cross}


def face_hull_masks(landmarks: Tensor, size: int, dilate: int = 1) -> Tensor:
    """(T, K, 2) landmarks in [0, 1] -> (T, 1, size, size) float masks of their convex hull, grown by
    `dilate` pixels so the outline itself counts as face."""
    import cv2

    masks = np.zeros((len(landmarks), size, size), np.uint8)
    for mask, points in zip(masks, landmarks.detach().cpu().numpy()):
        points = points[np.isfinite(points).all(1)] * size
        if len(points) >= 3:
            cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 1)
    if dilate:
        kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
        masks = np.stack([cv2.dilate(m, kernel) for m in masks])
    return torch.from_numpy(masks).float()[:, None]


def face_crops(images: Tensor, masks: Tensor, out_size: int = 64) -> Tensor:
    """Each image's face: pixels outside the mask set to mid-grey (the same for every image compared),
    cropped to the mask's bounding box and resized to `out_size`. (T, 3, H, W) -> (T, 3, out, out)."""
    import torch.nn.functional as F

    crops = []
    for image, mask in zip(images, masks):
        ys, xs = torch.nonzero(mask[0], as_tuple=True)
        if len(ys) == 0:
            y0, y1, x0, x1 = 0, image.shape[-2], 0, image.shape[-1]
        else:
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        face = image * mask + 0.5 * (1 - mask)
        crop = face[:, y0:y1, x0:x1][None]
        crops.append(F.interpolate(crop, size=(out_size, out_size), mode="bilinear", align_corners=False)[0])
    return torch.stack(crops)


def reference_scores(prediction: Tensor, source: Tensor, driving: Tensor, driving_landmarks: Tensor,
                     net) -> Dict[str, float]:
    """ST-LPIPS (`net`: `load_st_lpips("alex")`, loaded once by the caller) against the driving frames for the
    prediction and for copying the source frame, whole frame and face (landmark hull of the driving frame).
    Lower is better."""
    from mp_lightning.metrics.perceptual import st_lpips_distances

    copy = source[None].expand_as(prediction)
    masks = face_hull_masks(driving_landmarks, prediction.shape[-1])
    face = lambda x: face_crops(x, masks)  # noqa: E731
    mean = lambda a, b: float(st_lpips_distances(net, a, b).mean())  # noqa: E731
    return {
        "st_lpips": mean(prediction, driving),
        "st_lpips_copy_source": mean(copy, driving),
        "st_lpips_face": mean(face(prediction), face(driving)),
        "st_lpips_face_copy_source": mean(face(copy), face(driving)),
    }


def identity_scores(prediction: Tensor, source: Tensor, embedder) -> Dict[str, float]:
    """dlib identity of each predicted frame against the source (`embedder`: a `DlibFaceEmbedder`): cosine
    similarity, and the Euclidean distance of the descriptors (dlib's own measure: under 0.6 is the same person
    on LFW), by the suite's `IdentitySimilarity` and `AED`. Frames without a face are left out and counted.
    dlib's descriptors of the synthetic faces all lie in one narrow cone: read these beside `identity_check`."""
    from mp_lightning.metrics.identity import AED, IdentitySimilarity

    pred, pred_found = embedder(prediction)
    src, src_found = embedder(source[None])
    scores = {}
    for key, metric in (("id_similarity_dlib", IdentitySimilarity(embedder)), ("aed_dlib", AED(embedder))):
        metric.update(pred, src.expand_as(pred), pred_found, src_found.expand_as(pred_found))
        scores[key] = float(metric.compute())  # NaN when no frame (or not the source) shows a face
    scores["dlib_no_face"] = float((~pred_found).sum())
    if not bool(src_found[0]) or not bool(pred_found.any()):
        scores["source_no_face"] = float(not bool(src_found[0]))
    return scores


def identity_check(clips: List[Clip], size: int, embedder, frames_per_clip: int = 4) -> Dict[str, float]:
    """`metrics.identity.identity_separation` of dlib on `frames_per_clip` evenly spaced frames of every clip:
    how alike dlib finds two frames of one person and frames of two people, and how reliably it tells them
    apart (ROC AUC). `no_face`: frames in which dlib found no face (left out)."""
    from mp_lightning.metrics.identity import identity_separation
    from mp_lightning.preprocess.inputs import load_driving

    descriptors, people, missed = [], [], 0
    for clip in clips:
        frames, _ = load_driving(clip.path, size=size)
        picks = torch.linspace(0, len(frames) - 1, frames_per_clip).round().long().unique()
        found_descriptors, found = embedder(frames[picks])
        descriptors.append(found_descriptors[found])
        people += [clip.identity] * int(found.sum())
        missed += int((~found).sum())
    return {**identity_separation(torch.cat(descriptors), people), "no_face": float(missed)}


def write_grid(path: str | Path, source: Tensor, rows: Dict[str, tuple], frames: int = 4) -> Path:
    """A PNG: one row per driving clip and `frames` evenly spaced frames, each as source | driving |
    prediction. rows: name -> (driving (T, 3, H, W), prediction (T, 3, H, W))."""
    import cv2

    from mp_lightning.io.video import to_uint8_frames

    lines = []
    for name, (driving, prediction) in rows.items():
        picks = np.linspace(0, len(prediction) - 1, frames).round().astype(int)
        cells = [torch.cat([source, driving[i], prediction[i]], dim=2) for i in picks]
        gap = torch.ones(3, source.shape[1], 4)
        lines.append(torch.cat([c for cell in cells for c in (cell, gap)][:-1], dim=2))
    gap = torch.ones(3, 4, lines[0].shape[-1])
    grid = torch.cat([x for line in lines for x in (line, gap)][:-1], dim=1)
    image = to_uint8_frames(grid[None])[0]
    scale = max(1, 512 // image.shape[1])  # small test frames: enlarge (nearest) so faces can be inspected
    image = np.kron(image, np.ones((scale, scale, 1), np.uint8))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[..., ::-1])
    return path


def reenact_test_portraits(stage, data_root: str | Path, out_dir: str | Path, max_frames: Optional[int] = None,
                           fps: int = 25, grid_frames: int = 4, test_pairs: bool = True) -> dict:
    """Animate a test portrait driven by its own identity's clip and by another test identity's clip;
    write `self_reenactment.mp4`, `cross_identity.mp4` (source | driving | prediction) and `grid.png`
    to `out_dir`, and return their paths and the offline metrics (those the installed extra allows).
    `test_pairs`: also `test_pair_scores` over every test clip (one portrait is an anecdote), as
    report["test_pairs"], where ST-LPIPS is installed."""
    from mp_lightning.preprocess.inputs import load_driving, load_source
    from mp_lightning.networks.dlib_face import DlibFaceEmbedder, dlib_unavailable_reason
    from mp_lightning.networks.st_lpips import load_st_lpips, st_lpips_unavailable_reason
    from mp_lightning.io.video import write_video

    # each network loaded once for the whole report
    net = load_st_lpips("alex") if st_lpips_unavailable_reason() is None else None
    embedder = DlibFaceEmbedder() if dlib_unavailable_reason() is None else None
    out_dir = Path(out_dir)
    size = int(stage.hparams["config"]["data"]["image_size"])
    chosen = choose_portraits(test_clips(data_root))
    source, source_landmarks = load_source(chosen["source"].path, size=size, frame=0)
    report: dict = {"source": str(chosen["source"].path), "metrics": {}, "skipped": {}}
    rows = {}
    stage.eval()
    for name in ("self", "cross"):
        driving, driving_landmarks = load_driving(chosen[name].path, size=size, max_frames=max_frames)
        with torch.no_grad():
            prediction = stage.animate(source, driving, driving_landmarks, source_landmarks, batch_size=8).cpu()
        video = torch.cat([source[None].expand_as(prediction), driving.clamp(0, 1), prediction], dim=3)
        path = write_video(out_dir / f"{'self_reenactment' if name == 'self' else 'cross_identity'}.mp4",
                           video, fps=fps)
        report[name] = {"driving": str(chosen[name].path), "video": str(path)}
        rows[name] = (driving, prediction)
        metrics = report["metrics"].setdefault(name, {})
        if net is not None and name == "self":  # only self-reenactment has ground truth
            metrics.update(reference_scores(prediction, source, driving, driving_landmarks, net))
        if embedder is not None:
            metrics.update(identity_scores(prediction, source, embedder))
    for reason in filter(None, (st_lpips_unavailable_reason(), dlib_unavailable_reason())):
        report["skipped"][reason.split(":")[0]] = reason
    report["grid"] = str(write_grid(out_dir / "grid.png", source, rows, frames=grid_frames))
    if embedder is not None:
        try:
            report["identity_check"] = identity_check(test_clips(data_root), size, embedder)
        except ValueError as err:  # dlib found too few faces: the report keeps everything else
            report["skipped"]["identity_check"] = f"identity check skipped: {err}"
    if test_pairs and net is not None:
        report["test_pairs"] = test_pair_scores(stage, data_root, net=net)
    return report


def test_pair_scores(stage, data_root: str | Path, frames_per_clip: int = 12, net=None) -> Dict[str, float]:
    """`reference_scores` over the test split's self-reenactment pairs: in every test clip, frame 0 is the
    source and `frames_per_clip` evenly spaced frames are driving frames (and ground truth). Means over
    all pairs; lower is better."""
    from mp_lightning.preprocess.inputs import load_driving
    from mp_lightning.networks.st_lpips import load_st_lpips

    net = net or load_st_lpips("alex")
    size = int(stage.hparams["config"]["data"]["image_size"])
    totals: Dict[str, float] = {}
    count = 0
    stage.eval()
    for clip in test_clips(data_root):
        frames, landmarks = load_driving(clip.path, size=size)
        picks = torch.linspace(1, len(frames) - 1, frames_per_clip).round().long().unique()
        driving, driving_landmarks = frames[picks], landmarks[picks]
        with torch.no_grad():
            prediction = stage.animate(frames[0], driving, driving_landmarks, landmarks[0], batch_size=16).cpu()
        scores = reference_scores(prediction, frames[0], driving, driving_landmarks, net)
        for key, value in scores.items():
            totals[key] = totals.get(key, 0.0) + value * len(picks)
        count += len(picks)
    results = {key: value / count for key, value in totals.items()}
    results["pairs"] = count
    return results
