"""Landmark sets and everything MetaPortrait derives from landmarks.

A `LandmarkSpec` describes a landmark set (`ROOT/landmarks.json`, see the team data contract): its points,
the edges drawn as coloured lines, and which points define the eye/mouth boxes and the gaze heatmaps.
`LandmarkSpec.official669()` is MetaPortrait's 669-point set, with the exact edge list and colours.

Landmarks everywhere are float32 (B, K, 2), (x right, y down) in [0, 1] of the frame. The official
loader maps its 58-point subset to [-1, 1] with `2 p - 1`; the gaze points below are in that range.

Pixel-exactness: `draw_landmark_lines`, `eye_mask` and `mouth_mask` reproduce the official
`PersonalDataset` bit for bit (float32 arithmetic, truncation with int(), cv2 anti-aliased lines).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mp_lightning.errors import DataError

ASSET_EDGES = Path(__file__).resolve().parent / "assets" / "official669_edges_palette.tsv"

# official `ldmk_idx` (config `dataset.ldmk_idx`): the 58 landmark ids the loader keeps, in this order
OFFICIAL669_SUBSET: Tuple[int, ...] = (
    521, 505, 338, 398, 347, 35, 191, 30, 32, 207, 630, 629, 319, 4, 541, 61, 637, 660, 638, 587, 273, 590,
    269, 432, 118, 327, 12, 373, 58, 619, 466, 469, 464, 308, 152, 305, 150, 411, 635, 634, 564, 250, 443,
    129, 364, 322, 49, 7, 361, 105, 434, 120, 500, 186, 575, 261, 636, 74,
)
EYE_PAD = 3  # px padding of the official eye boxes
MOUTH_PAD = 5  # px padding of the official mouth box


def default_palette(num_edges: int) -> List[Tuple[int, int, int]]:
    """The official colour recipe for `num_edges` lines.

    Every (r, g, b) with levels range(0, 255, step), step = int(255 / n ** (1/3)), in r-g-b nested order;
    keep the last n colours; shuffle with Python's `random` seeded 0. For n = 616 this is the official table.
    (n = 1 gives black, i.e. an invisible line: use n >= 2 edges or give `colors` explicitly.)
    """
    if num_edges <= 0:
        return []
    step = max(1, int(255 / num_edges ** (1.0 / 3)))
    levels = range(0, 255, step)
    colors = [(r, g, b) for r in levels for g in levels for b in levels]
    colors = colors[-num_edges:]
    # a private generator seeded 0 draws the same sequence as random.seed(0) without touching global state
    random.Random(0).shuffle(colors)
    if len(colors) < num_edges:
        raise ValueError(f"palette recipe gives only {len(colors)} colours for {num_edges} edges")
    return colors


@lru_cache(maxsize=1)
def _official_edges_and_colors() -> Tuple[Tuple[Tuple[int, int], ...], Tuple[Tuple[int, int, int], ...]]:
    edges, colors = [], []
    with open(ASSET_EDGES) as f:
        header = f.readline().split()
        if header[:6] != ["edge_index", "v0", "v1", "c0", "c1", "c2"]:
            raise DataError(f"{ASSET_EDGES}: unexpected header {header}")
        for line in f:
            if line.strip():
                _, v0, v1, c0, c1, c2 = (int(t) for t in line.split())
                edges.append((v0, v1))
                colors.append((c0, c1, c2))
    return tuple(edges), tuple(colors)


@dataclass
class LandmarkSpec:
    """A landmark set: what is drawn and which points define the MetaPortrait masks and gaze maps."""

    name: str  # short name, e.g. "official669" or "synthetic-v1"
    num_points: int  # K, points per frame
    edges: List[Tuple[int, int]]  # point pairs drawn as lines, in drawing order
    colors: List[Tuple[int, int, int]] = field(default_factory=list)  # RGB per edge; [] = default_palette
    flip_permutation: Optional[List[int]] = None  # mirror partner of each point after a horizontal flip
    eye_ids: List[int] = field(default_factory=list)  # points defining the eye boxes (see eye_box)
    mouth_x_ids: List[int] = field(default_factory=list)  # [left, right] points of the mouth box
    mouth_y_ids: List[int] = field(default_factory=list)  # [top, bottom] points of the mouth box
    gaze_ids: List[int] = field(default_factory=list)  # points turned into gaze heatmaps (official: 8)
    eye_box: str = "minmax"  # "official": eye_ids = [l, r, t, b] per eye; "minmax": bounding box per half
    subset_ids: Optional[List[int]] = None  # official 58-point `ldmk_idx` (for reference / export)
    groups: Optional[Dict[str, List[int]]] = None  # named point groups (contour, left_eye, ...), informative
    subsets: Optional[Dict[str, Dict]] = None  # declared point subsets (data.landmark_subset picks one), informative

    def __post_init__(self):
        self.edges = [tuple(int(v) for v in e) for e in self.edges]
        if not self.colors:
            self.colors = default_palette(len(self.edges))
        self.colors = [tuple(int(c) for c in col) for col in self.colors]
        self.validate()

    # ------------------------------------------------------------------------------------------ build
    def validate(self) -> None:
        k = self.num_points
        if len(self.colors) != len(self.edges):
            raise DataError(f"landmark set {self.name!r}: {len(self.colors)} colours for {len(self.edges)} edges")
        for e in self.edges:
            if len(e) != 2 or not all(0 <= v < k for v in e):
                raise DataError(f"landmark set {self.name!r}: edge {e} is not a pair of ids in [0, {k})")
        for key in ("eye_ids", "mouth_x_ids", "mouth_y_ids", "gaze_ids"):
            ids = getattr(self, key)
            if any(not 0 <= int(i) < k for i in ids):
                raise DataError(f"landmark set {self.name!r}: {key} has ids outside [0, {k})")
        for key in ("mouth_x_ids", "mouth_y_ids"):
            if getattr(self, key) and len(getattr(self, key)) != 2:
                raise DataError(f"landmark set {self.name!r}: {key} must have exactly 2 ids")
        if self.flip_permutation is not None and sorted(self.flip_permutation) != list(range(k)):
            raise DataError(f"landmark set {self.name!r}: flip_permutation is not a permutation of range({k})")
        if self.eye_box not in ("official", "minmax"):
            raise DataError(f"landmark set {self.name!r}: eye_box must be 'official' or 'minmax'")
        if self.eye_box == "official" and len(self.eye_ids) != 8:
            raise DataError(f"landmark set {self.name!r}: eye_box 'official' needs 8 eye_ids")

    @classmethod
    def official669(cls) -> "LandmarkSpec":
        """MetaPortrait's 669-point dense set (616 edges, official palette, official mask/gaze anchors)."""
        edges, colors = _official_edges_and_colors()
        sub = OFFICIAL669_SUBSET
        return cls(
            name="official669",
            num_points=669,
            edges=list(edges),
            colors=list(colors),
            flip_permutation=None,  # not published; the official pipeline does no flip augmentation
            eye_ids=[sub[i] for i in range(1, 9)],
            mouth_x_ids=[sub[14], sub[15]],
            mouth_y_ids=[sub[56], sub[57]],
            gaze_ids=[sub[i] for i in range(29, 37)],
            eye_box="official",
            subset_ids=list(sub),
        )

    @classmethod
    def from_json(cls, source: Union[str, Path, Dict]) -> "LandmarkSpec":
        """From `landmarks.json` (a path) or its parsed dict. `{"preset": "official669"}` is accepted."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                raise DataError(f"landmark description {path} not found") from None
            except json.JSONDecodeError as e:
                raise DataError(f"landmark description {path} is not valid JSON: {e}") from None
        else:
            data = dict(source)
        if data.get("preset"):
            if data["preset"] != "official669":
                raise DataError(f"unknown landmark preset {data['preset']!r}; known: 'official669'")
            return cls.official669()
        missing = [k for k in ("num_points", "edges") if k not in data]
        if missing:
            raise DataError(f"landmark description lacks {missing} (or a 'preset')")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"landmark description has unknown keys {unknown}; known: {sorted(known)}")
        data.setdefault("name", "custom")
        return cls(**data)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "num_points": self.num_points,
            "edges": [list(e) for e in self.edges],
            "colors": [list(c) for c in self.colors],
            "flip_permutation": self.flip_permutation,
            "eye_ids": list(self.eye_ids),
            "mouth_x_ids": list(self.mouth_x_ids),
            "mouth_y_ids": list(self.mouth_y_ids),
            "gaze_ids": list(self.gaze_ids),
            "eye_box": self.eye_box,
            "subset_ids": self.subset_ids,
            "groups": self.groups,
            "subsets": self.subsets,
        }


# ----------------------------------------------------------------------------------------------------
# line images
# ----------------------------------------------------------------------------------------------------
def _as_numpy_f32(landmarks) -> np.ndarray:
    if isinstance(landmarks, torch.Tensor):
        landmarks = landmarks.detach().cpu().numpy()
    return np.asarray(landmarks, dtype=np.float32)


def draw_landmark_lines(landmarks, spec: LandmarkSpec, size: int = 256) -> torch.Tensor:
    """Coloured landmark-line images, as the official loader draws them.

    landmarks: (B, K, 2) or (K, 2) in [0, 1], (x, y). Each edge is a 1 px anti-aliased cv2 line of its
    colour from (int(x0*size), int(y0*size)) to (int(x1*size), int(y1*size)), drawn in edge order on
    black. Returns float32 (B, 3, size, size) (or (3, size, size)) in [0, 1], channels = colour tuple
    order (RGB).
    """
    import cv2

    pts = _as_numpy_f32(landmarks)
    single = pts.ndim == 2
    if single:
        pts = pts[None]
    if pts.shape[1] != spec.num_points:
        raise DataError(f"landmarks have {pts.shape[1]} points, landmark set {spec.name!r} has {spec.num_points}")
    edges = np.asarray(spec.edges, dtype=np.int64).reshape(-1, 2)
    out = np.zeros((pts.shape[0], size, size, 3), dtype=np.uint8)
    # float32 product then truncation toward zero, exactly like `int(kp * size)` on float32 numpy values
    ipts = (pts * np.float32(size)).astype(np.int64)
    for b in range(pts.shape[0]):
        canvas = out[b]
        pairs = ipts[b][edges]
        for (p0, p1), color in zip(pairs.tolist(), spec.colors):
            cv2.line(canvas, tuple(p0), tuple(p1), color, 1, cv2.LINE_AA)
    # contiguous (B, 3, H, W), as the official ToTensor + collate give: a channels-last view here would make
    # the refinement network's label maps channels-last, whose convolutions round differently (~1e-7)
    tensor = torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2))).float() / 255
    return tensor[0] if single else tensor


# ----------------------------------------------------------------------------------------------------
# masks and gaze
# ----------------------------------------------------------------------------------------------------
def _norm_coords(pts: np.ndarray) -> np.ndarray:
    """[0, 1] -> [-1, 1] in float32, as the official loader (`ldmk * 2 - 1`)."""
    return pts * np.float32(2) - np.float32(1)


def _to_px(v: np.float32, n: int) -> int:
    # official: int((v + 1) * n / 2) with v a float32 in [-1, 1]
    return int((v + np.float32(1)) * np.float32(n) / np.float32(2))


def _box(mask: torch.Tensor, top: int, bottom: int, left: int, right: int, pad: int) -> None:
    h, w = mask.shape[-2:]
    mask[..., max(0, top - pad): min(h, bottom + pad + 1), max(0, left - pad): min(w, right + pad + 1)] = 1


def eye_mask(landmarks, spec: LandmarkSpec, size: int = 256, pad: int = EYE_PAD) -> torch.Tensor:
    """0/1 boxes around both eyes: landmarks (B, K, 2) in [0, 1] -> (B, 1, size, size) float32.

    "official" spec: boxes x from eye_ids[0..1], y from eye_ids[2..3] (left eye), same with [4..7]
    (right eye), padded by `pad` px (official loader `get_focal_mask`). "minmax": bounding box of each
    half of eye_ids.
    """
    pts = _norm_coords(_as_numpy_f32(landmarks))
    if pts.ndim == 2:
        pts = pts[None]
    mask = torch.zeros(pts.shape[0], 1, size, size)
    ids = list(spec.eye_ids)
    if not ids:
        return mask
    for b in range(pts.shape[0]):
        p = pts[b]
        if spec.eye_box == "official":
            groups = [ids[0:4], ids[4:8]]
            for l, r, t, d in groups:
                _box(mask[b], _to_px(p[t, 1], size), _to_px(p[d, 1], size), _to_px(p[l, 0], size),
                     _to_px(p[r, 0], size), pad)
        else:
            half = len(ids) // 2 if len(ids) % 2 == 0 and len(ids) >= 2 else len(ids)
            for group in ([ids[:half], ids[half:]] if half < len(ids) else [ids]):
                g = p[group]
                _box(mask[b], _to_px(g[:, 1].min(), size), _to_px(g[:, 1].max(), size),
                     _to_px(g[:, 0].min(), size), _to_px(g[:, 0].max(), size), pad)
    return mask


def mouth_mask(landmarks, spec: LandmarkSpec, size: int = 256, pad: int = MOUTH_PAD) -> torch.Tensor:
    """0/1 mouth box: x range from mouth_x_ids, y range from mouth_y_ids, padded by `pad` px.

    landmarks (B, K, 2) in [0, 1] -> (B, 1, size, size) float32 (official loader `get_mouth_area`).
    """
    pts = _norm_coords(_as_numpy_f32(landmarks))
    if pts.ndim == 2:
        pts = pts[None]
    mask = torch.zeros(pts.shape[0], 1, size, size)
    if not spec.mouth_x_ids or not spec.mouth_y_ids:
        return mask
    (xl, xr), (yt, yd) = spec.mouth_x_ids, spec.mouth_y_ids
    for b in range(pts.shape[0]):
        p = pts[b]
        left, right = _to_px(p[xl, 0], size), _to_px(p[xr, 0], size)
        top, bottom = _to_px(p[yt, 1], size), _to_px(p[yd, 1], size)
        if spec.eye_box != "official":
            left, right = min(left, right), max(left, right)
            top, bottom = min(top, bottom), max(top, bottom)
        _box(mask[b], top, bottom, left, right, pad)
    return mask


def gaze_points(landmarks: torch.Tensor, spec: LandmarkSpec) -> torch.Tensor:
    """The gaze points in [-1, 1]: landmarks (B, K, 2) in [0, 1] -> (B, len(gaze_ids), 2), `2 p - 1`."""
    if not spec.gaze_ids:
        return landmarks.new_zeros(landmarks.shape[0], 0, 2)
    idx = torch.as_tensor(spec.gaze_ids, device=landmarks.device, dtype=torch.long)
    return landmarks.float().index_select(-2, idx) * 2 - 1


def gaze_heatmaps(points: torch.Tensor, size: Union[int, Sequence[int]], variance: float = 0.005) -> torch.Tensor:
    """Gaussian heatmaps of gaze points: points (B, G, 2) in [-1, 1] -> (B, G, H, W), peak 1,
    exp(-0.5 d^2 / variance) on an align_corners=True [-1, 1] grid (the official generator's maps)."""
    from mp_lightning.networks.blocks import kp2gaussian

    hw = (size, size) if isinstance(size, int) else tuple(size)
    return kp2gaussian(points, hw, variance)


# ----------------------------------------------------------------------------------------------------
# batch helper
# ----------------------------------------------------------------------------------------------------
def retarget_landmarks(source: torch.Tensor, driving: torch.Tensor, driving_initial: torch.Tensor) -> torch.Tensor:
    """The driving person's expression and head motion moved onto the source's face shape.

    `source + s * (driving - driving_initial)`, with s the source face's size over the driving clip's first
    frame's (RMS distance of the points to their centroid): the relative motion of FOMM's `--relative
    --adapt_scale`, for landmarks. Without it a cross-identity driving frame also carries the driving
    person's face shape into the drawing, and the prediction takes it on. Shapes (..., K, 2); the
    driving frames (..., K, 2) or (N, ..., K, 2) against one initial frame broadcast.
    """
    def size(points):
        centred = points - points.mean(dim=-2, keepdim=True)
        return centred.square().sum(-1).mean(-1).sqrt()[..., None, None]

    scale = size(source) / size(driving_initial).clamp_min(1e-6)
    return source + scale * (driving - driving_initial)


def metaportrait_inputs(batch: Dict, spec: LandmarkSpec, size: Optional[int] = None, retarget: bool = False) -> Dict:
    """Add the landmark-derived MetaPortrait inputs to a batch dict (returns a new dict).

    Needs `source` (B, 3, H, W), `source_landmarks`, `driving_landmarks` (B, K, 2) in [0, 1]. Adds:
      source_line, driving_line (B, 3, H, W) in [0, 1]; eye_mask, mouth_mask (B, 1, H, W) 0/1 from the
      driving landmarks; gaze_points (B, G, 2) in [-1, 1] from the driving landmarks.
    Keys already present are kept (e.g. lines precomputed by a data loader). `retarget`: a batch with
    `driving_initial_landmarks` (cross-identity) is drawn with `retarget_landmarks`.
    """
    out = dict(batch)
    src = batch["source"]
    size = int(size or src.shape[-1])
    device = src.device
    drv = batch["driving_landmarks"]
    if retarget and "driving_initial_landmarks" in batch:
        drv = retarget_landmarks(batch["source_landmarks"], drv, batch["driving_initial_landmarks"])
    if "source_line" not in out:
        out["source_line"] = draw_landmark_lines(batch["source_landmarks"], spec, size).to(device)
    if "driving_line" not in out:
        out["driving_line"] = draw_landmark_lines(drv, spec, size).to(device)
    if "eye_mask" not in out:
        out["eye_mask"] = eye_mask(drv, spec, size).to(device)
    if "mouth_mask" not in out:
        out["mouth_mask"] = mouth_mask(drv, spec, size).to(device)
    if "gaze_points" not in out:
        out["gaze_points"] = gaze_points(torch.as_tensor(drv), spec).to(device)
    return out


# ----------------------------------------------------------------------------------------------------
# per sample, in DataLoader workers
# ----------------------------------------------------------------------------------------------------
#: what `metaportrait_inputs` adds to a pairs batch (and `MetaPortraitSampleInputs` to a sample)
DERIVED_KEYS = ("source_line", "driving_line", "eye_mask", "mouth_mask", "gaze_points")


def _check_points(landmarks: torch.Tensor, key: str, spec: LandmarkSpec) -> None:
    if landmarks.shape[-2] != spec.num_points:
        raise DataError(
            f"'{key}' has {landmarks.shape[-2]} points per frame but this model was trained on the "
            f"landmark set '{spec.name}' with {spec.num_points}: use landmarks from the same detector"
        )


class MetaPortraitSampleInputs:
    """The landmark drawings of `metaportrait_inputs`, made per sample (in DataLoader workers).

    A picklable callable `item -> item` for a DataModule sample dict (no batch axis). It adds exactly
    the values that `metaportrait_inputs` would add to the collated batch (each sample is drawn on its
    own there too, so stacking the per-sample results gives the same tensors bit for bit):

    * a sample with `source_landmarks` / `driving_landmarks` (K, 2) (modes pairs, cross_identity,
      windows): source_line, driving_line (3, H, W) in [0, 1]; eye_mask, mouth_mask (1, H, W) 0/1;
      gaze_points (G, 2) in [-1, 1];
    * an identity task (`source_landmarks` and `{support,query}_driving_landmarks` (N, K, 2)):
      source_line (3, H, W) and, per split, `{split}_driving_line` (N, 3, H, W), `{split}_eye_mask`,
      `{split}_mouth_mask` (N, 1, H, W) and `{split}_gaze_points` (N, G, 2), which
      `datamodules.task_pairs` turns into a pairs batch's keys.

    Keys already present are kept; a sample without landmarks is returned unchanged.
    """

    def __init__(self, spec: LandmarkSpec, size: int, retarget: bool = False):
        self.spec = spec
        self.size = int(size)
        self.retarget = retarget  # draw cross-identity samples (with driving_initial_landmarks) retargeted

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec.name!r}, size={self.size}, retarget={self.retarget})"

    def _driving(self, lms: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Driving-side inputs of (N, K, 2) landmarks: lines, masks and gaze points with a leading N."""
        spec, size = self.spec, self.size
        return {
            "driving_line": draw_landmark_lines(lms, spec, size),
            "eye_mask": eye_mask(lms, spec, size),
            "mouth_mask": mouth_mask(lms, spec, size),
            "gaze_points": gaze_points(lms, spec),
        }

    def __call__(self, item: Dict) -> Dict:
        spec, size = self.spec, self.size
        src = item.get("source_landmarks")
        if src is None:
            return item
        tasks = [s for s in ("support", "query") if f"{s}_driving_landmarks" in item]
        if not tasks and "driving_landmarks" not in item:
            return item
        _check_points(src, "source_landmarks", spec)
        out = dict(item)
        if "source_line" not in out:
            out["source_line"] = draw_landmark_lines(src, spec, size)
        if not tasks:
            drv = item["driving_landmarks"]
            _check_points(drv, "driving_landmarks", spec)
            if self.retarget and "driving_initial_landmarks" in item:
                drv = retarget_landmarks(src, drv, item["driving_initial_landmarks"])
            for key, value in self._driving(drv.unsqueeze(0)).items():
                out.setdefault(key, value[0])
            return out
        for split in tasks:
            drv = item[f"{split}_driving_landmarks"]
            _check_points(drv, f"{split}_driving_landmarks", spec)
            derived = self._driving(drv)
            out.setdefault(f"{split}_driving_line", derived.pop("driving_line"))
            for key, value in derived.items():
                out.setdefault(f"{split}_{key}", value)
        return out
