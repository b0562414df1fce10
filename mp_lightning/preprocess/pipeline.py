"""Raw talking-head videos -> our VoxCeleb-style layout (clips, landmarks, identity embeddings, report).

Per video (:func:`process_video`):

1. decode once, MTCNN on every ``every``-th frame (downscaled), link boxes into tracks (:mod:`.tracking`);
2. cut tracks into clips (face lost / jumped / drifted from the clip's first box / ``max_frames``),
   drop clips shorter than ``min_frames`` or with a face smaller than ``min_face`` pixels;
3. decode again, crop every clip frame with its static square box, resize to ``size``;
4. landmarks on every cropped frame (frames without a face are interpolated and counted; a clip with
   more than ``max_missing`` of its frames missing is dropped), optional temporal smoothing;
5. write ``<clip>.mp4`` (H.264, GOP 8, no B-frames: cheap random access), ``<clip>.landmarks.npy``
   and, when the VGGFace2 weights are present, ``<clip>.identity.npy`` (mean facenet embedding).

Output (:func:`preprocess_dataset`)::

    OUT/landmarks.json
    OUT/identity.json                 what the .identity.npy files hold (kind, dim), when any was written
    OUT/{train,test}/<identity>/<video>/<clip>.mp4 (+ .landmarks.npy, + .identity.npy)
    OUT/preprocess_report.json        every video: kept clips, and why anything was dropped
    OUT/.preprocess/<id>.json         per-video done markers: a restart skips finished videos

Identity: RAW/<identity>/.../<video>.mp4 (first folder under RAW), or a CSV ``--identity-map`` with
columns ``video,identity[,split]`` (video = path relative to RAW, or just the file name). Split: the
CSV's split column, else a hash of the identity name (stable when videos are added, and one
identity never lands in both splits).
"""
from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mp_lightning.errors import DataError, MissingWeightsError, UserFacingError
from mp_lightning.io.video import video_fps
from mp_lightning.preprocess import tracking
from mp_lightning.preprocess.landmark_sources import (
    SOURCES,
    LandmarkSource,
    PrecomputedLandmarks,
    fill_missing,
    make_source,
    smooth_landmarks,
)

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
CLIP_GOP = 8  # same keyframe interval as the synthetic data: decoding one random frame touches <= 8 frames
CLIP_CRF = 18
MARKER_DIR = ".preprocess"
REPORT_NAME = "preprocess_report.json"
EMBED_FRAMES = 8  # frames averaged into a clip's identity embedding
LANDMARK_CHOICES = SOURCES + ("precomputed",)


@dataclass
class Settings:
    """Everything that changes the output; a finished video is redone when any of these differ.

    Each field is also a flag of `mp-lightning preprocess` (`mp_lightning.commands.flags`).
    """

    size: int = field(default=256, metadata={"help": "crop size in pixels, even"})
    landmarks: str = field(default="mediapipe", metadata={
        "choices": LANDMARK_CHOICES,
        "help": "mediapipe: 478-point FaceMesh with irises; mediapipe468; mediapipe68: sparse iBUG-68 subset; "
                "mediapipe-tessellation: 478 points drawn as the full mesh; precomputed: <video>.landmarks.npy "
                "beside each raw video, (F, K, 2) in [0, 1] of the raw frame (with RAW/landmarks.json, else the "
                "official 669 preset); none: no landmarks"})
    smooth: str = field(default="none", metadata={
        "flag": "--smooth-landmarks", "choices": ("none", "savgol", "one_euro"), "const": "savgol",
        "help": "temporal smoothing of the landmarks (flag alone: savgol)"})
    # FOMM's minimum tube length
    min_frames: int = field(default=64, metadata={"help": "drop face tracks shorter than this"})
    # FOMM's maximum tube length; clips are held in memory while written
    max_frames: int = field(default=1024, metadata={
        "help": "cut longer tracks into clips of at most this many frames"})
    # MTCNN on every n-th frame, boxes interpolated in between
    every: int = field(default=5, metadata={
        "help": "run the face detector on every n-th frame, interpolate between"})
    detect_size: int = field(default=480, metadata={
        "help": "downscale frames to this longer side for face detection"})
    # median MTCNN box side in pixels of the raw frame
    min_face: int = field(default=32, metadata={
        "help": "drop faces smaller than this many pixels in the raw video"})
    max_missing: float = field(default=0.2, metadata={
        "help": "drop clips with landmarks missing on more than this share of frames"})
    enlarge: float = field(default=tracking.ENLARGE, metadata={
        "help": "crop side = the side of the union of a track's face boxes + (this - 1) x the median face box side"})
    test_fraction: float = field(default=0.1, metadata={
        "help": "share of identities put in test/, by a hash of the name"})

    def key(self) -> dict:
        return asdict(self)


@dataclass
class VideoJob:
    path: str  # absolute
    rel: str  # relative to RAW, posix
    identity: str
    split: str
    video: str  # output folder name
    out: str
    settings: Settings = field(default_factory=Settings)


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------
def iter_frames(path: str | Path):
    """Yield (index, (H, W, 3) uint8 RGB) for every frame of a video (PyAV, threaded decoding)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            yield i, frame.to_ndarray(format="rgb24")


def scan_faces(path: str | Path, detector: tracking.FaceDetector, every: int) -> dict:
    """Decode a video once, detecting faces on every ``every``-th frame and on the last one.

    Returns {"frames": T, "height", "width", "detections": [(frame, boxes (N,4), probs (N,)), ...]}.
    """
    every = max(1, int(every))
    detections = []
    pending: list[tuple[int, np.ndarray]] = []
    last = None
    n = 0
    h = w = 0

    def flush():
        if pending:
            for (i, _), (b, p) in zip(pending, detector.detect([f for _, f in pending])):
                detections.append((i, b, p))
            pending.clear()

    for i, frame in iter_frames(path):
        n = i + 1
        h, w = frame.shape[:2]
        if i % every == 0:
            pending.append((i, frame))
            if len(pending) >= detector.batch:
                flush()
            last = None
        else:
            last = (i, frame)
    if last is not None:
        pending.append(last)
    flush()
    return {"frames": n, "height": h, "width": w, "detections": detections}


def crop_chunks(path: str | Path, chunks: list[tracking.Chunk], size: int):
    """Decode again and yield (chunk index, (n, size, size, 3) uint8 crops) as each chunk completes."""
    if not chunks:
        return
    buffers: dict[int, list[np.ndarray]] = {}
    last_stop = max(c.stop for c in chunks)
    for i, frame in iter_frames(path):
        for ci, c in enumerate(chunks):
            if c.start <= i < c.stop:
                buffers.setdefault(ci, []).append(tracking.crop_frame(frame, c.crop, size))
                if i == c.stop - 1:
                    yield ci, np.stack(buffers.pop(ci))
        if i >= last_stop - 1:
            break
    for ci in sorted(buffers):  # the video turned out shorter than its first decode said: keep what there is
        yield ci, np.stack(buffers.pop(ci))


def plan_chunks(scan: dict, settings: Settings) -> tuple[list[tracking.Chunk], list[dict], int]:
    """Tracks -> clips to keep, and the dropped pieces with reasons. Returns (chunks, dropped, number of tracks)."""
    tracks = tracking.link_tracks(scan["detections"], max_gap=2 * max(1, settings.every))
    chunks, dropped = [], []
    for ti, tr in enumerate(tracks):
        for start, stop, boxes in tracking.split_track(tr, settings.max_frames):
            face = float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
            info = {"track": ti, "frames": [int(start), int(stop)]}
            if stop - start < settings.min_frames:
                dropped.append({**info, "reason": f"too short ({stop - start} frames < min_frames {settings.min_frames})"})
            elif face < settings.min_face:
                dropped.append({**info, "reason": f"face too small ({face:.0f} px < min_face {settings.min_face})"})
            else:
                crop = tracking.crop_box(boxes, enlarge=settings.enlarge)
                chunks.append(tracking.Chunk(int(start), int(stop), boxes, crop, ti))
    return chunks, dropped, len(tracks)


# ------------------------------------------------------------------------------------------------
# Per-process models (built once per worker)
# ------------------------------------------------------------------------------------------------
_CACHE: dict = {}


def _detector(settings: Settings) -> tracking.FaceDetector:
    key = ("det", settings.detect_size)
    if key not in _CACHE:
        _CACHE[key] = tracking.FaceDetector(max_side=settings.detect_size)
    return _CACHE[key]


def _source(kind: str) -> LandmarkSource | None:
    key = ("lm", kind)
    if key not in _CACHE:
        _CACHE[key] = None if kind == "precomputed" else make_source(kind)
    return _CACHE[key]


def _embedder():
    """FaceEmbedder with VGGFace2 weights, or the MissingWeightsError message (str) when they are absent."""
    if "emb" not in _CACHE:
        try:
            from mp_lightning.networks.identity import FaceEmbedder

            _CACHE["emb"] = FaceEmbedder(pretrained=True, align="center")
        except MissingWeightsError as err:
            _CACHE["emb"] = str(err)
    return _CACHE["emb"]


def write_identity_description(out: Path) -> None:
    """OUT/identity.json: which embedding the <clip>.identity.npy files hold, so that a model uses them only
    in place of its own embedder of the same kind (see `datamodules.clips.load_identity_description`)."""
    from datamodules.clips import IDENTITY_JSON
    from mp_lightning.networks.identity import EMBEDDING_DIM, embedding_kind

    desc = {"kind": embedding_kind(pretrained=True), "dim": EMBEDDING_DIM, "unit_norm": True,
            "made_by": f"mp-lightning preprocess: mean of the embeddings of {EMBED_FRAMES} evenly spaced frames, "
                       f"MTCNN box with facenet's margin, then L2-normalised"}
    tmp = out / (IDENTITY_JSON + ".partial")
    tmp.write_text(json.dumps(desc, indent=1) + "\n")
    os.replace(tmp, out / IDENTITY_JSON)


def identity_embedding(embedder, crops: np.ndarray, boxes_crop: np.ndarray) -> np.ndarray:
    """Mean facenet embedding over EMBED_FRAMES evenly spaced frames, L2-normalised, (512,) float32.

    crops (n, S, S, 3) uint8; boxes_crop (n, 4) face boxes in crop pixels. Each face is cut with
    facenet-pytorch's MTCNN margin rule (32 px of 160), the crops the network was trained on.
    """
    import torch
    import torch.nn.functional as F

    from mp_lightning.networks.identity import CROP_SIZE

    idx = np.unique(np.linspace(0, len(crops) - 1, min(EMBED_FRAMES, len(crops))).round().astype(int))
    size = crops.shape[1]
    faces = []
    for i in idx:
        x0, y0, x1, y1 = boxes_crop[i]
        mx = 32 * (x1 - x0) / (CROP_SIZE - 32)
        my = 32 * (y1 - y0) / (CROP_SIZE - 32)
        a0, b0 = int(max(x0 - mx / 2, 0)), int(max(y0 - my / 2, 0))
        a1, b1 = int(min(x1 + mx / 2, size)), int(min(y1 + my / 2, size))
        img = torch.from_numpy(np.ascontiguousarray(crops[i, b0:max(b1, b0 + 2), a0:max(a1, a0 + 2)]))
        img = img.permute(2, 0, 1)[None].float() / 255.0
        faces.append(F.interpolate(img, size=(CROP_SIZE, CROP_SIZE), mode="bilinear", antialias=True, align_corners=False))
    with torch.no_grad():
        emb = embedder.embed_crops(torch.cat(faces)).mean(0)
    return (emb / emb.norm().clamp_min(1e-8)).numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------
# One video
# ------------------------------------------------------------------------------------------------
def _precomputed_for(video: Path) -> np.ndarray:
    """Precomputed landmarks of a raw video: <stem>.landmarks.npy (F, K, 2) in [0, 1] of the raw frame,
    or a folder <stem>/ldmks/ (or <stem>_ldmks/) of per-frame files."""
    for cand in (video.with_name(video.stem + ".landmarks.npy"), video.with_name(video.stem) / "ldmks",
                 video.with_name(video.stem + "_ldmks")):
        if cand.exists():
            return PrecomputedLandmarks.load(cand)
    raise DataError(f"no precomputed landmarks beside {video.name} (expected {video.stem}.landmarks.npy)")


def _write_atomic_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".partial.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def process_video(job: VideoJob) -> dict:
    """Preprocess one raw video into clips; returns its report entry (never raises for bad videos)."""
    from mp_lightning.io.video import write_video

    s = job.settings
    entry = {"video": job.rel, "identity": job.identity, "split": job.split, "status": "ok", "clips": [], "dropped": []}
    t0 = time.perf_counter()
    out_dir = Path(job.out) / job.split / job.identity / job.video
    try:
        scan = scan_faces(job.path, _detector(s), s.every)
        entry.update(frames=scan["frames"], height=scan["height"], width=scan["width"])
        if scan["frames"] == 0:
            raise DataError("no decodable frames")
        fps = video_fps(job.path)
        entry["fps"] = round(fps, 3)
        chunks, dropped, n_tracks = plan_chunks(scan, s)
        entry["tracks"] = n_tracks
        entry["dropped"] = dropped
        if n_tracks == 0:
            entry.update(status="no face", reason=f"no face found in {len(scan['detections'])} sampled frames")
            return entry
        precomputed = _precomputed_for(Path(job.path)) if s.landmarks == "precomputed" else None
        source = _source(s.landmarks)
        if out_dir.exists():  # an interrupted earlier attempt: its clips are incomplete or stale
            shutil.rmtree(out_dir)
        kept = 0
        for ci, crops in crop_chunks(job.path, chunks, s.size):
            c = chunks[ci]
            info = {"track": c.track, "frames": [c.start, c.start + len(crops)]}
            side = c.crop[2]
            lms, missing = None, 0
            if precomputed is not None:
                raw = precomputed[c.start:c.start + len(crops)]
                if len(raw) < len(crops):
                    entry["dropped"].append({**info, "reason": f"precomputed landmarks cover only {len(raw)} frames"})
                    continue
                px = raw * np.array([scan["width"], scan["height"]], np.float32)
                lms = tracking.to_crop_coords(px, c.crop)
            elif source is not None:
                raw = source.detect_raw(crops, video=True)
                found = np.isfinite(raw).all(axis=(1, 2))
                missing = int((~found).sum())
                if missing > s.max_missing * len(crops) or not found.any():
                    entry["dropped"].append(
                        {**info, "reason": f"landmarks missing on {missing}/{len(crops)} frames (max_missing {s.max_missing})"}
                    )
                    continue
                lms, missing = fill_missing(raw)
            if lms is not None:
                lms = smooth_landmarks(lms, s.smooth, fps=fps)
            name = f"{kept:05d}"
            clip_path = out_dir / f"{name}.mp4"
            tmp = out_dir / f"{name}.partial.mp4"
            write_video(tmp, crops, fps=max(1, int(round(fps))), crf=CLIP_CRF, gop=CLIP_GOP)
            if lms is not None:
                _write_atomic_npy(out_dir / f"{name}.landmarks.npy", lms.astype(np.float32))
            clip_info = {
                "clip": f"{job.split}/{job.identity}/{job.video}/{name}",
                **info,
                "crop": [round(v, 1) for v in c.crop],
                "face_px": round(float(np.median(c.boxes[:, 3] - c.boxes[:, 1])), 1),
                "missing_landmarks": missing,
            }
            emb = _embedder()
            if isinstance(emb, str):
                clip_info["identity_embedding"] = "skipped: VGGFace2 weights missing"
            else:
                boxes = np.stack([tracking.to_crop_coords(c.boxes[:, :2], c.crop),
                                  tracking.to_crop_coords(c.boxes[:, 2:], c.crop)], 1).reshape(-1, 4) * s.size
                _write_atomic_npy(out_dir / f"{name}.identity.npy", identity_embedding(emb, crops, boxes[: len(crops)]))
                clip_info["identity_embedding"] = "written"
            os.replace(tmp, clip_path)  # the mp4 last: a clip file exists only when its side files do
            entry["clips"].append(clip_info)
            kept += 1
        if not entry["clips"]:
            entry.update(status="no clips", reason="every track was dropped (see dropped)")
    except UserFacingError as err:
        entry.update(status="error", reason=str(err))
    except Exception as err:  # noqa: BLE001 - a broken file must not stop a dataset run
        kind = "decode error" if type(err).__module__.startswith("av") else type(err).__name__
        entry.update(status="error", reason=f"{kind}: {err}")
    finally:
        entry["seconds"] = round(time.perf_counter() - t0, 2)
    if entry["status"] == "error" and out_dir.exists():
        shutil.rmtree(out_dir, ignore_errors=True)
    return entry


# ------------------------------------------------------------------------------------------------
# A folder of videos
# ------------------------------------------------------------------------------------------------
def find_videos(raw: str | Path) -> list[Path]:
    raw = Path(raw)
    return sorted(p for p in raw.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and MARKER_DIR not in p.parts)


def _safe(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return keep or "x"


def split_of(identity: str, test_fraction: float) -> str:
    """Deterministic identity -> split: sha1 of the name as a number in [0, 1) compared with test_fraction."""
    h = int(hashlib.sha1(identity.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    return "test" if h < test_fraction else "train"


def read_identity_map(path: str | Path) -> dict[str, dict]:
    """CSV with header video,identity[,split] -> {video key: row}. Keys: the path relative to RAW and the file name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"identity map not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower() for c in (reader.fieldnames or [])}
        if not {"video", "identity"} <= cols:
            raise DataError(f"{path}: needs a header with columns video,identity[,split]; got {sorted(cols)}")
        rows = {}
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            split = row.get("split", "")
            if split and split not in ("train", "test"):
                raise DataError(f"{path}: split must be train or test, got {split!r} for {row['video']}")
            rows[row["video"]] = row
    return rows


def plan_jobs(raw: Path, out: Path, settings: Settings, identity_map: str | None) -> tuple[list[VideoJob], list[dict]]:
    """Identity, split and output name of every video; videos that cannot be placed come back as report entries."""
    mapping = read_identity_map(identity_map) if identity_map else None
    jobs, skipped = [], []
    names: dict[tuple[str, str], str] = {}
    for p in find_videos(raw):
        rel = p.relative_to(raw).as_posix()
        parts = Path(rel).parts
        split = ""
        if mapping is not None:
            row = mapping.get(rel) or mapping.get(p.name) or mapping.get(p.stem)
            if row is None:
                skipped.append({"video": rel, "status": "skipped", "reason": "not in the identity map", "clips": [], "dropped": []})
                continue
            identity, split = row["identity"], row.get("split", "")
            video = Path(rel).with_suffix("").as_posix()
        elif len(parts) >= 2:
            identity = parts[0]
            video = Path(*parts[1:]).with_suffix("").as_posix()
        else:
            identity = video = p.stem
        identity, video = _safe(identity), _safe(video.replace("/", "_"))
        split = split or split_of(identity, settings.test_fraction)
        # two raw files that map to the same output folder (a.mp4 and a.mov): keep both, apart
        key = (identity, video)
        if key in names and names[key] != rel:
            video = f"{video}_{hashlib.sha1(rel.encode()).hexdigest()[:6]}"
        names[(identity, video)] = rel
        jobs.append(VideoJob(str(p), rel, identity, split, video, str(out), settings))
    return jobs, skipped


def _marker_path(out: Path, rel: str) -> Path:
    return out / MARKER_DIR / f"{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:16]}.json"


def _finished(out: Path, job: VideoJob) -> dict | None:
    """The saved report entry of a video finished with the same settings whose clips are all still there."""
    path = _marker_path(out, job.rel)
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if marker.get("settings") != job.settings.key() or marker.get("entry", {}).get("video") != job.rel:
        return None
    entry = marker["entry"]
    for c in entry.get("clips", []):
        if not (out / f"{c['clip']}.mp4").is_file():
            return None
    return entry


def _run_job(job: VideoJob) -> dict:
    entry = process_video(job)
    if entry["status"] != "error" or "decode" in entry.get("reason", ""):
        # errors of the environment (missing package...) are retried next run; bad files are not
        path = _marker_path(Path(job.out), job.rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps({"settings": job.settings.key(), "entry": entry}))
        os.replace(tmp, path)
    return entry


def _worker_init() -> None:
    import cv2
    import torch

    torch.set_num_threads(1)  # parallelism comes from the worker processes
    cv2.setNumThreads(1)


def landmark_spec_for(settings: Settings, raw: Path) -> dict | None:
    if settings.landmarks == "none":
        return None
    if settings.landmarks == "precomputed":
        path = raw / "landmarks.json"
        return json.loads(path.read_text()) if path.is_file() else {"preset": "official669"}
    return _source(settings.landmarks).spec()


def preprocess_dataset(
    raw: str | Path,
    out: str | Path,
    settings: Settings | None = None,
    workers: int = 1,
    identity_map: str | None = None,
    progress: bool = True,
) -> dict:
    """Preprocess every video under ``raw`` into ``out``; returns the report (also written to OUT/preprocess_report.json).

    Resumable: videos with a done marker for the same settings are skipped (their entries marked "resumed").
    """
    from tqdm.auto import tqdm

    settings = settings or Settings()
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"raw video folder not found: {raw}")
    if settings.size < 16 or settings.size % 2:
        raise DataError(f"--size must be an even number >= 16, got {settings.size}")
    if settings.min_frames < 1 or settings.max_frames < settings.min_frames:
        raise DataError("need 1 <= min_frames <= max_frames")
    out.mkdir(parents=True, exist_ok=True)
    jobs, skipped = plan_jobs(raw, out, settings, identity_map)
    if not jobs and not skipped:
        raise DataError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {raw}")
    spec = landmark_spec_for(settings, raw)  # builds the detector early: a missing package fails before any work
    if spec is not None:
        (out / "landmarks.json").write_text(json.dumps(spec, indent=1) + "\n")

    entries: dict[str, dict] = {e["video"]: e for e in skipped}
    todo = []
    for job in jobs:
        done = _finished(out, job)
        if done is not None:
            entries[job.rel] = {**done, "resumed": True}
        else:
            todo.append(job)
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="video", desc="preprocess", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for job in todo:
                bar.set_postfix_str(job.rel[-40:])
                entries[job.rel] = _run_job(job)
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(workers, len(todo)), initializer=_worker_init) as pool:
                for entry in pool.imap_unordered(_run_job, todo):
                    entries[entry["video"]] = entry
                    bar.update(1)
    finally:
        bar.close()
    report = _report(raw, out, settings, spec, entries, time.perf_counter() - t0)
    if any(c.get("identity_embedding") == "written" for v in entries.values() for c in v.get("clips", [])):
        write_identity_description(out)
    tmp = out / (REPORT_NAME + ".partial")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out / REPORT_NAME)
    return report


def _report(raw: Path, out: Path, settings: Settings, spec: dict | None, entries: dict, seconds: float) -> dict:
    videos = [entries[k] for k in sorted(entries)]
    reasons: dict[str, int] = {}
    for v in videos:
        if v["status"] != "ok":
            key = v["status"] if v["status"] != "error" else "error: " + v.get("reason", "").split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        for d in v.get("dropped", []):
            key = "clip " + d["reason"].split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
    clips = [c for v in videos for c in v.get("clips", [])]
    emb_states = {c.get("identity_embedding") for c in clips}
    return {
        "raw": str(raw),
        "out": str(out),
        "settings": settings.key(),
        "landmarks": None if spec is None else spec.get("name", spec.get("preset")),
        "identity_embeddings": (
            "written" if emb_states == {"written"} else
            "skipped: VGGFace2 weights missing (mp_lightning.io.weights.require('vggface2'))" if clips else "no clips"
        ),
        "totals": {
            "videos": len(videos),
            "videos_with_clips": sum(1 for v in videos if v.get("clips")),
            "resumed": sum(1 for v in videos if v.get("resumed")),
            "clips": len(clips),
            "clip_frames": sum(c["frames"][1] - c["frames"][0] for c in clips),
            "dropped": reasons,
            "seconds_this_run": round(seconds, 1),
        },
        "videos": videos,
    }
