"""A 73-d stand-in for PIRender's Deep3DFaceRecon motion descriptor, from mediapipe's 3D face mesh.

Deep3DFaceRecon needs the Basel Face Model and weights that cannot be installed here. This stand-in keeps
the official channel layout (see `datamodules.semantics`) with quantities measured on the mesh:

* rotation angles (64-66) and translation (67-69): a similarity fit (Umeyama) of the frame's 3D mesh to
  a reference shape (the mean Procrustes-aligned mesh of the train split): angles (about x, y, z; R =
  Rz(roll) Ry(yaw) Rx(pitch), radians, in the crop's x-right / y-down / z-away frame), translation
  (x, y of the fitted reference centre in fractions of the crop, and the fitted scale);
* expression (0-63): the mesh brought back into the reference pose, minus its identity's neutral shape
  (the mean of that identity's aligned meshes in the split), projected on a PCA of such differences fitted
  on the train split (stored in ROOT/semantics_mediapipe.npz and reused for every split);
* crop parameters (70-72): a 2D similarity from a 5-point template (eye centres, nose tip, mouth corners)
  to the frame: its scale and translation in pixels of the crop, the roles of the official (ratio, t0, t1).

It is a different descriptor from Deep3DFaceRecon's (`ROOT/semantics.json` kind `mediapipe`): weights
trained on one refuse the other.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mp_lightning.errors import DataError

KIND = "mediapipe"
PCA_FILE = "semantics_mediapipe.npz"
NUM_EXPRESSION = 64
# mediapipe FaceMesh ids: iris centres (refined mesh), nose tip, mouth corners
FIVE_POINTS = (468, 473, 1, 61, 291)
# where those five points sit in a frontal, centred face crop (fractions of the crop side)
FIVE_POINT_TEMPLATE = np.array([[0.37, 0.40], [0.63, 0.40], [0.50, 0.55], [0.39, 0.68], [0.61, 0.68]])


# ------------------------------------------------------------------------------------------------- geometry
def similarity_fit(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991): scale s, rotation R (det +1), translation t with
    target ~ s * R @ source + t, for (N, D) point sets, D = 2 or 3."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    cov = xt.T @ xs / len(source)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(len(d))
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    var = (xs ** 2).sum() / len(source)
    scale = float((d * sign).sum() / var)
    return scale, rot, mu_t - scale * rot @ mu_s


def rotation_from_angles(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch) (column vectors)."""
    cp, sp, cy, sy, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


def angles_from_rotation(rot: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) of R = Rz(roll) Ry(yaw) Rx(pitch), |yaw| < 90 degrees."""
    pitch = np.arctan2(rot[2, 1], rot[2, 2])
    yaw = np.arctan2(-rot[2, 0], np.hypot(rot[2, 1], rot[2, 2]))
    roll = np.arctan2(rot[1, 0], rot[0, 0])
    return np.array([pitch, yaw, roll])


def reference_shape(meshes: list[np.ndarray], iterations: int = 3) -> np.ndarray:
    """Mean shape of (F, N, 3) meshes by generalised Procrustes: centred, unit RMS size."""
    frames = np.concatenate(meshes).astype(np.float64)
    ref = frames[0] - frames[0].mean(0)
    ref /= np.sqrt((ref ** 2).sum(1).mean())
    for _ in range(iterations):
        aligned = np.stack([align_to(f, ref)[0] for f in frames])
        ref = aligned.mean(0)
        ref -= ref.mean(0)
        ref /= np.sqrt((ref ** 2).sum(1).mean())
    return ref


def align_to(mesh: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """(mesh brought into the reference pose and size, s, R, t of ref -> mesh)."""
    s, rot, t = similarity_fit(ref, mesh)
    aligned = (mesh - t) @ rot / s  # inverse of s R x + t, row vectors
    return aligned, s, rot, t


# ------------------------------------------------------------------------------------------------- descriptor
def pose_and_shape(mesh: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(angles (3,), translation (3,), aligned mesh (N, 3)) of one frame's mesh (N, 3)."""
    aligned, s, rot, t = align_to(mesh.astype(np.float64), ref)
    centre = t + s * rot @ ref.mean(0)
    return angles_from_rotation(rot), np.array([centre[0], centre[1], s]), aligned


def crop_parameters(mesh: np.ndarray, size: int) -> np.ndarray:
    """(ratio, t0, t1): the 2D similarity from the 5-point template to the frame, scale and translation in pixels."""
    pts = mesh[list(FIVE_POINTS), :2] * size
    s, _, t = similarity_fit(FIVE_POINT_TEMPLATE * size, pts)
    return np.array([s, t[0], t[1]])


def fit_expression_pca(deltas: np.ndarray, components: int = NUM_EXPRESSION) -> tuple[np.ndarray, np.ndarray]:
    """(mean (3N,), basis (components, 3N)) of (M, 3N) aligned-minus-neutral meshes; rows past the data's
    rank are zero."""
    mean = deltas.mean(0)
    _, _, vt = np.linalg.svd(deltas - mean, full_matrices=False)
    basis = np.zeros((components, deltas.shape[1]))
    k = min(components, len(vt))
    basis[:k] = vt[:k]
    return mean, basis


def clip_descriptors(meshes: np.ndarray, ref: np.ndarray, neutral: np.ndarray, pca_mean: np.ndarray,
                     pca_basis: np.ndarray, size: int) -> np.ndarray:
    """(F, N, 3) meshes of one clip -> float32 (F, 73) descriptors."""
    out = np.zeros((len(meshes), 73), np.float32)
    for f, mesh in enumerate(meshes):
        angles, trans, aligned = pose_and_shape(mesh, ref)
        out[f, :NUM_EXPRESSION] = ((aligned - neutral).reshape(-1) - pca_mean) @ pca_basis.T
        out[f, 64:67] = angles
        out[f, 67:70] = trans
        out[f, 70:73] = crop_parameters(mesh, size)
    return out


# ------------------------------------------------------------------------------------------------- detection
def detect_meshes(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, 478, 3) mediapipe FaceMesh (x, y in fractions of the frame, z on x's
    scale); frames without a face are interpolated."""
    from mp_lightning.preprocess.landmark_sources import _quiet_stderr, fill_missing, import_mediapipe

    fm = import_mediapipe()
    out = np.full((len(frames), 478, 3), np.nan, np.float32)
    with _quiet_stderr(), fm.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                      min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
        for t, frame in enumerate(frames):
            result = mesh.process(np.ascontiguousarray(frame))
            if result.multi_face_landmarks:
                out[t] = [(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark[:478]]
    return fill_missing(out)[0]


def _clips(root: Path, split: str) -> list[Path]:
    return sorted((root / split).rglob("*.mp4")) if (root / split).is_dir() else []


def _identity(root: Path, split: str, clip: Path) -> str:
    return clip.relative_to(root / split).parts[0]


def write_mediapipe_semantics(root: str | Path, train_split: str = "train", splits=("train", "test"),
                              progress: bool = True) -> dict:
    """Compute `<clip>.semantics.npy` for every clip of `root`'s splits and write ROOT/semantics.json
    (kind mediapipe) and the PCA / reference shape (ROOT/semantics_mediapipe.npz, fitted on `train_split`,
    or reused when the file exists). Returns a summary."""
    from mp_lightning.io.video import read_video
    from datamodules.semantics import write_semantics_description

    root = Path(root)
    clips = {split: _clips(root, split) for split in splits}
    if not clips.get(train_split):
        raise DataError(f"{root}/{train_split}: no clips to fit the mediapipe descriptor's PCA on")
    meshes, sizes = {}, {}
    items = [(s, c) for s in splits for c in clips[s]]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="descriptors", unit="clip")
    for split, clip in items:
        frames = read_video(clip)
        meshes[clip], sizes[clip] = detect_meshes(frames), frames.shape[2]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    def neutral_shapes(split: str, ref: np.ndarray) -> tuple[dict, dict]:
        aligned = {c: np.stack([align_to(m.astype(np.float64), ref)[0] for m in meshes[c]]) for c in clips[split]}
        by_id: dict[str, list] = {}
        for c in clips[split]:
            by_id.setdefault(_identity(root, split, c), []).append(aligned[c])
        return aligned, {i: np.concatenate(v).mean(0) for i, v in by_id.items()}

    pca_path = root / PCA_FILE
    if pca_path.is_file():
        saved = np.load(pca_path)
        ref, pca_mean, pca_basis = saved["reference"], saved["pca_mean"], saved["pca_basis"]
    else:
        ref = reference_shape([meshes[c] for c in clips[train_split]])
        aligned, neutral = neutral_shapes(train_split, ref)
        deltas = np.concatenate([(aligned[c] - neutral[_identity(root, train_split, c)]).reshape(len(aligned[c]), -1)
                                 for c in clips[train_split]])
        pca_mean, pca_basis = fit_expression_pca(deltas)
        np.savez(pca_path, reference=ref, pca_mean=pca_mean, pca_basis=pca_basis)
    written = 0
    for split in splits:
        if not clips[split]:
            continue
        _, neutral = neutral_shapes(split, ref)
        for c in clips[split]:
            desc = clip_descriptors(meshes[c], ref, neutral[_identity(root, split, c)], pca_mean, pca_basis, sizes[c])
            np.save(c.with_suffix(".semantics.npy"), desc)
            written += 1
    write_semantics_description(root, KIND, pca=PCA_FILE, fitted_on=train_split,
                                note="mediapipe stand-in, see mp_lightning.preprocess.semantics")
    summary = {"kind": KIND, "clips": written, "pca": str(pca_path)}
    (root / "semantics_report.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def descriptors_for_frames(frames: np.ndarray, pca_file: str | Path) -> np.ndarray:
    """On-the-fly descriptors (T, 73) of frames (T, H, W, 3) uint8 RGB (a driving video or a source image), with
    the reference shape and PCA of a data root's `semantics_mediapipe.npz`; the neutral shape is the clip's own
    mean aligned mesh (the person's neutral, as for an identity of the data)."""
    pca_file = Path(pca_file)
    if not pca_file.is_file():
        raise DataError(f"{pca_file}: no mediapipe descriptor PCA (written by `mp-lightning preprocess --semantics "
                        f"mediapipe` into the data root)")
    saved = np.load(pca_file)
    ref = saved["reference"]
    meshes = detect_meshes(np.asarray(frames))
    neutral = np.stack([align_to(m.astype(np.float64), ref)[0] for m in meshes]).mean(0)
    return clip_descriptors(meshes, ref, neutral, saved["pca_mean"], saved["pca_basis"], frames.shape[2])
