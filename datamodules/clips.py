"""Finding, checking and reading VoxCeleb-style clips (mp4 files or PNG frame folders).

A clip is either a video file ``<split>/<identity>/<video>/<clip>.mp4`` or a folder of frame
images (FOMM's layout ``<split>/<identity>#<video>#<clip>/<frame>.png``). Its landmarks are
``<clip>.landmarks.npy`` beside it (float32 ``(F, K, 2)`` in [0, 1]) and, optionally, a
precomputed identity embedding ``<clip>.identity.npy`` (float32 ``(D,)``).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mp_lightning.errors import DataError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ClipInfo:
    """One usable clip, as found by :func:`scan_split`."""

    name: str  # "train/id00000/v000/00000" (root-relative, no suffix): the batch's `clip` entry
    identity: str
    path: str  # video file, or folder of frame images
    kind: str  # "video" or "frames"
    num_frames: int
    height: int
    width: int
    landmarks_path: str | None = None
    identity_path: str | None = None
    semantics_path: str | None = None  # <clip>.semantics.npy, checked and set when data.semantics is on
    frame_files: tuple = field(default_factory=tuple)  # sorted frame image names ("frames" clips)


@dataclass
class SplitScan:
    """Result of scanning one split folder: the usable clips and every rejected one with its reason."""

    split: str
    folder: str
    clips: list[ClipInfo]
    bad: list[dict]  # {"clip": name, "path": path, "reason": text}
    empty_identity_folders: list[str]
    clips_found: int

    def summary(self) -> dict:
        return {
            "folder": self.folder,
            "clips_found": self.clips_found,
            "clips_usable": len(self.clips),
            "clips_bad": len(self.bad),
            "identities_usable": len({c.identity for c in self.clips}),
            "bad_clips": self.bad,
            "empty_identity_folders": self.empty_identity_folders,
        }


def landmarks_path_for(clip_path: Path) -> Path:
    base = clip_path.with_suffix("") if clip_path.suffix.lower() in VIDEO_SUFFIXES else clip_path
    return base.parent / f"{base.name}.landmarks.npy"


def identity_path_for(clip_path: Path) -> Path:
    base = clip_path.with_suffix("") if clip_path.suffix.lower() in VIDEO_SUFFIXES else clip_path
    return base.parent / f"{base.name}.identity.npy"


IDENTITY_JSON = "identity.json"  # ROOT/identity.json: what the <clip>.identity.npy files of the root hold


def read_json(path: Path):
    """The parsed JSON file of a data root (landmarks.json, identity.json, semantics.json); a DataError naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def load_identity_description(root: str | Path) -> dict | None:
    """What the root's ``<clip>.identity.npy`` files hold: ``{"kind": str, "dim": int, ...}`` or None.

    ``ROOT/identity.json`` (written by ``mp-lightning preprocess``) declares it, e.g.
    ``{"kind": "facenet-vggface2", "dim": 512}``. A root preprocessed before that file existed is
    recognised by its ``preprocess_report.json`` (every clip embedded: facenet with the VGGFace2
    weights, the only embedder the preprocessing ever used). Anything else (e.g. the official 256-d
    ``src_<k>_id.npy`` copied in) is undeclared: None.
    """
    root = Path(root)
    path = root / IDENTITY_JSON
    if path.is_file():
        desc = read_json(path)
        if not isinstance(desc, dict) or not isinstance(desc.get("kind"), str) or not isinstance(desc.get("dim"), int):
            raise DataError(f'{path}: expected an object with "kind" (e.g. "facenet-vggface2") and "dim" (e.g. 512)')
        return desc
    report = root / "preprocess_report.json"
    if report.is_file():
        try:
            written = json.loads(report.read_text()).get("identity_embeddings") == "written"
        except (OSError, ValueError, AttributeError):
            written = False
        if written:
            return {"kind": "facenet-vggface2", "dim": 512, "declared_by": "preprocess_report.json"}
    return None


def load_landmark_spec(root: str | Path) -> dict | None:
    """The parsed ``ROOT/landmarks.json`` or None when the root has none."""
    path = Path(root) / "landmarks.json"
    if not path.is_file():
        return None
    spec = read_json(path)
    if not isinstance(spec, dict) or not ("preset" in spec or "num_points" in spec):
        raise DataError(f"{path}: expected an object with 'num_points' (and 'edges', 'flip_permutation') or 'preset'")
    if "flip_permutation" in spec and "num_points" in spec:
        perm = spec["flip_permutation"]
        if sorted(perm) != list(range(spec["num_points"])):
            raise DataError(f"{path}: flip_permutation is not a permutation of range(num_points)")
    return spec


def subset_landmark_spec(spec: dict | None, name: str, root: str | Path = "") -> tuple[list[int], dict]:
    """(point ids into the full set, landmarks.json-style description of the subset) for subset `name`.

    A subset is declared in landmarks.json as `"subsets": {name: {"ids": [...], "edges": [...], "eye_ids": ...}}`
    (edges and box/gaze ids index the subset; edges default to the full set's edges between kept points).
    """
    where = Path(root) / "landmarks.json"
    subsets = (spec or {}).get("subsets") or {}
    if name not in subsets:
        raise DataError(f"data.landmark_subset: no subset '{name}' in {where} (declared: {sorted(subsets) or 'none'})")
    sub = subsets[name]
    ids = [int(i) for i in sub["ids"]]
    pos = {old: new for new, old in enumerate(ids)}
    if len(pos) != len(ids) or not all(0 <= i < int(spec["num_points"]) for i in ids):
        raise DataError(f"{where}: subset '{name}' has repeated or out-of-range point ids")
    edges = sub.get("edges") or [[pos[a], pos[b]] for a, b in spec["edges"] if a in pos and b in pos]
    out = {"name": f"{spec.get('name', 'landmarks')}/{name}", "num_points": len(ids), "edges": edges}
    perm = spec.get("flip_permutation")
    if perm is not None:
        try:
            out["flip_permutation"] = [pos[int(perm[i])] for i in ids]
        except KeyError:
            raise DataError(f"{where}: subset '{name}' is not closed under flip_permutation") from None
    for key in ("eye_ids", "mouth_x_ids", "mouth_y_ids", "gaze_ids"):
        if key in sub:
            out[key] = list(sub[key])
        elif key in spec:
            try:
                out[key] = [pos[int(i)] for i in spec[key]]
            except KeyError:
                raise DataError(f"{where}: subset '{name}' lacks the {key} points; declare {key} for it") from None
    return ids, out


def _discover(split_dir: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """(clip path, kind) pairs under split_dir, and identity folders that hold no clip at all."""
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(split_dir):
        dirnames.sort()
        d = Path(dirpath)
        images = [f for f in filenames if f.lower().endswith(IMAGE_SUFFIXES)]
        if images and d != split_dir:
            found.append((d, "frames"))
            dirnames[:] = []
            continue
        for f in sorted(filenames):
            if f.lower().endswith(VIDEO_SUFFIXES):
                found.append((d / f, "video"))
    empty = []
    for child in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if not any(p == child or child in p.parents for p, _ in found):
            empty.append(child.name)
    return found, empty


def _identity_of(rel: Path) -> str:
    parts = rel.parts
    if len(parts) >= 2:  # <identity>/<video>/<clip>.mp4
        return parts[0]
    return rel.name.split("#")[0]  # FOMM: <identity>#<video>#<clip>


def _probe_video(path: Path) -> tuple[int, int, int]:
    """Frame count, height, width of a video, demuxing every packet and decoding the first frame."""
    import av

    try:
        container = av.open(str(path))
    except Exception as err:  # noqa: BLE001 - any FFmpeg failure means the file is unusable
        raise ValueError(f"cannot open container ({type(err).__name__}: {err})") from None
    with container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        declared = stream.frames
        packets = 0
        first = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packets += 1
                if first is None:
                    frames = packet.decode()
                    if frames:
                        first = frames[0]
            if first is None:
                for frame in stream.codec_context.decode(None):
                    first = frame
                    break
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"cannot demux/decode ({type(err).__name__}: {err})") from None
        if first is None:
            raise ValueError("no decodable frame")
        if declared and packets < declared:
            raise ValueError(f"truncated: {packets} of {declared} declared frames present")
        return packets, first.height, first.width


def import_decord():
    """decord, imported after OpenCV: decord ships an old zlib, and when it is loaded first OpenCV's libpng
    binds to it and every PNG read/write fails ("libpng error: bad parameters to zlib")."""
    import cv2  # noqa: F401  (load order matters, see above)
    import decord

    return decord


def read_image(path: str | Path):
    """BGR uint8 image or None (decoded from the file's bytes, which also works for non-ASCII paths)."""
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def _probe_frames(path: Path, files: list[str]) -> tuple[int, int, int]:
    import cv2

    for f in files:
        if os.path.getsize(path / f) == 0:
            raise ValueError(f"empty frame file {f}")
    img = read_image(path / files[0])
    if img is None:
        raise ValueError(f"cannot decode frame {files[0]}")
    return len(files), img.shape[0], img.shape[1]


def _check_landmarks(path: Path, num_frames: int, num_points: int | None, margin: float) -> int:
    if not path.is_file():
        raise ValueError(f"missing landmarks {path.name}")
    try:
        lms = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"unreadable landmarks {path.name} ({err})") from None
    if lms.ndim != 3 or lms.shape[2] != 2:
        raise ValueError(f"landmarks {path.name} have shape {tuple(lms.shape)}, expected (F, K, 2)")
    if lms.shape[0] != num_frames:
        raise ValueError(f"landmarks {path.name} have {lms.shape[0]} frames, the clip has {num_frames}")
    if num_points is not None and lms.shape[1] != num_points:
        raise ValueError(f"landmarks {path.name} have {lms.shape[1]} points, landmarks.json says {num_points}")
    arr = np.asarray(lms, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"landmarks {path.name} contain NaN/inf")
    if arr.min() < -margin or arr.max() > 1 + margin:
        raise ValueError(
            f"landmarks {path.name} range [{arr.min():.3f}, {arr.max():.3f}] is outside [0, 1] by more than {margin}"
            " (are they in pixels instead of fractions of the frame?)"
        )
    return lms.shape[1]


def scan_split(
    root: str | Path,
    split: str,
    min_frames: int,
    use_landmarks: bool = True,
    num_points: int | None = None,
    landmark_margin: float = 0.25,
) -> SplitScan:
    """Check every clip of ``root/split`` cheaply and sort it into usable or bad (with a reason)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist (make one with `mp-lightning synth {root}`)")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"data root {root} has no '{split}' folder (expected {split_dir}/<identity>/<video>/<clip>.mp4)")
    found, empty = _discover(split_dir)
    clips, bad = [], []
    for path, kind in found:
        rel = path.relative_to(split_dir)
        name = f"{split}/{rel.with_suffix('').as_posix() if kind == 'video' else rel.as_posix()}"
        try:
            if kind == "video":
                n, h, w = _probe_video(path)
                files: tuple = ()
            else:
                files = tuple(sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES)))
                n, h, w = _probe_frames(path, list(files))
            if n < min_frames:
                raise ValueError(f"only {n} frames, a sample needs {min_frames}")
            lm_path = landmarks_path_for(path)
            if use_landmarks:
                k = _check_landmarks(lm_path, n, num_points, landmark_margin)
                if num_points is None:
                    num_points = k  # no landmarks.json: the first good clip fixes K
            id_path = identity_path_for(path)
            clips.append(
                ClipInfo(
                    name=name,
                    identity=_identity_of(rel),
                    path=str(path),
                    kind=kind,
                    num_frames=n,
                    height=h,
                    width=w,
                    landmarks_path=str(lm_path) if use_landmarks else None,
                    identity_path=str(id_path) if id_path.is_file() else None,
                    frame_files=files,
                )
            )
        except ValueError as err:
            bad.append({"clip": name, "path": str(path), "reason": str(err)})
    return SplitScan(split, str(split_dir), clips, bad, empty, len(found))


class FrameReader:
    """Reads chosen frames of clips; one per process, keeping a small LRU of open video readers.

    Readers are never shared between processes: the cache is dropped when the object is pickled
    into a DataLoader worker and when it is used from a process other than its creator (fork).
    """

    def __init__(self, cache_size: int = 8, threads: int = 1):
        self.cache_size = max(1, cache_size)
        self.threads = threads
        self._cache: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_pid"] = None
        return state

    def _reader(self, path: str):
        if self._pid != os.getpid():
            self._cache = OrderedDict()
            self._pid = os.getpid()
        reader = self._cache.get(path)
        if reader is not None:
            self._cache.move_to_end(path)
            return reader
        decord = import_decord()

        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=self.threads)
        self._cache[path] = reader
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return reader

    def drop(self, path: str) -> None:
        self._cache.pop(path, None)

    def read(self, clip: ClipInfo, indices) -> np.ndarray:
        """Frames ``indices`` of ``clip`` as uint8 ``(N, H, W, 3)`` RGB (indices may repeat, any order)."""
        indices = [int(i) for i in indices]
        unique = sorted(set(indices))
        if clip.kind == "video":
            reader = self._reader(clip.path)
            frames = reader.get_batch(unique).asnumpy()
        else:
            import cv2

            imgs = []
            for i in unique:
                img = read_image(os.path.join(clip.path, clip.frame_files[i]))
                if img is None:
                    raise ValueError(f"cannot decode {clip.frame_files[i]}")
                imgs.append(img[..., ::-1])
            frames = np.stack(imgs)
        if len(unique) == len(indices) and unique == indices:
            return frames
        pos = {i: k for k, i in enumerate(unique)}
        return frames[[pos[i] for i in indices]]


def report_dict(root: str, mode: str, min_frames: int, scans: dict[str, SplitScan]) -> dict:
    return {
        "root": str(root),
        "mode": mode,
        "min_frames_per_clip": min_frames,
        "splits": {name: scan.summary() for name, scan in scans.items()},
    }


def write_report(report_dir: str | Path, report: dict) -> Path:
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "data_report.json"
    tmp = out / f".data_report.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)  # every DDP rank writes the same content; the rename keeps it whole
    return path


__all__ = ["ClipInfo", "SplitScan", "FrameReader", "scan_split", "load_landmark_spec", "write_report"]
