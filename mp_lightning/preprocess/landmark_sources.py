"""Landmark sources with one interface: ``detect(frames) -> (T, K, 2)`` and ``spec() -> dict``.

- :class:`MediaPipeMesh`: mediapipe's legacy FaceMesh (468 points, or 478 with ``refine_landmarks=True``:
  the last 10 are the two irises, which give the gaze points). Its tflite models ship in the
  mediapipe 0.10.21 wheel, so it runs offline. Edges come from mediapipe's own connection sets.
- :class:`MediaPipe68`: a sparse 68-point subset of the 478 mesh in the usual iBUG-68 order (jaw 0-16,
  brows 17-26, nose 27-35, eyes 36-47, lips 48-67) with the standard 68-point line drawing; for the
  sparse-landmark ablation and comparisons with 68-point methods.
- :class:`PrecomputedLandmarks`: landmarks computed elsewhere (e.g. the official 669-point ``.npy`` files).

Coordinates follow the data contract: float32, x right, y down, in [0, 1] of the frame given
(mediapipe's normalised coordinates use the same continuous convention, pixel centres at
``(col + 0.5) / W``). A frame where the detector finds no face is NaN in :meth:`LandmarkSource.detect_raw`;
:func:`fill_missing` interpolates such frames from their neighbours and counts them.

Install: mediapipe 0.10.21 pins numpy<2 and protobuf<5, which would break wandb; it runs fine with
numpy 2 and protobuf 6.33.5, so it is installed without its dependencies (see :data:`INSTALL_HINT`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from mp_lightning.errors import DataError, UserFacingError

INSTALL_HINT = "pip install -e \".[landmarks]\" && pip install --no-deps mediapipe==0.10.21"

# ------------------------------------------------------------------------------------------------
# Index tables of the mediapipe face mesh
# ------------------------------------------------------------------------------------------------
#: Mirror partner of each of the 478 mesh points (a horizontal flip maps point i to MESH_FLIP[i]).
#: Derived once by running FaceMesh on a photo and on its mirror image, matching the mirrored
#: predictions to the originals with a minimum-cost assignment (scipy linear_sum_assignment), and
#: checked: it is an involution, the 28 fixed points lie on the midline, every contour / lip / iris /
#: oval connection maps to a connection, the left-eye set maps onto the right-eye set, and 1316 of
#: the 1322 tessellation edges map onto edges (the triangulation itself is not exactly symmetric).
MESH_FLIP = [
    0, 1, 2, 248, 4, 5, 6, 249, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 250, 251, 252, 253, 254, 255, 256,
    257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271, 272, 273, 274, 275, 276, 277,
    278, 279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291, 292, 293, 294, 295, 296, 297, 298,
    299, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319,
    320, 321, 322, 323, 94, 324, 325, 326, 327, 328, 329, 330, 331, 332, 333, 334, 335, 336, 337, 338, 339, 340,
    341, 342, 343, 344, 345, 346, 347, 348, 349, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 360, 361,
    362, 363, 364, 365, 366, 367, 368, 369, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379, 151, 152, 380,
    381, 382, 383, 384, 385, 386, 387, 388, 389, 390, 164, 391, 392, 393, 168, 394, 395, 396, 397, 398, 399,
    175, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 195,
    419, 197, 420, 199, 200, 421, 422, 423, 424, 425, 426, 427, 428, 429, 430, 431, 432, 433, 434, 435, 436,
    437, 438, 439, 440, 441, 442, 443, 444, 445, 446, 447, 448, 449, 450, 451, 452, 453, 454, 455, 456, 457,
    458, 459, 460, 461, 462, 463, 464, 465, 466, 467, 3, 7, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86,
    87, 88, 89, 90, 91, 92, 93, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132,
    133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 153, 154, 155,
    156, 157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 170, 171, 172, 173, 174, 176, 177, 178, 179,
    180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 196, 198, 201, 202, 203, 204,
    205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225,
    226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246,
    247, 473, 476, 475, 474, 477, 468, 471, 470, 469, 472
]

#: iBUG-68 order -> mesh index. Chosen on the mesh by hand to sit where the 68-point annotation does;
#: mirror-consistent with MESH_FLIP (MESH_FLIP[MESH_TO_68[i]] == MESH_TO_68[FLIP_68[i]] for all i).
MESH_TO_68 = [
    127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,  # jaw 0-16
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows 17-21 (image left), 22-26
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose bridge 27-30, lower nose 31-35
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes 36-41 (image left), 42-47
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips 48-59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips 60-67
]

# mesh ids used for the eye / mouth masks and the gaze heatmaps (see the landmark contract)
_MESH_MOUTH_X = [61, 291]  # mouth corners
_MESH_MOUTH_Y = [0, 17]  # top of the upper lip, bottom of the lower lip (midline)
_MESH_IRIS_RING = [469, 470, 471, 472, 474, 475, 476, 477]  # 4 ring points per iris (468 / 473 are centres)
_MESH_EYELID_GAZE = [33, 159, 133, 145, 362, 386, 263, 374]  # corners + lid middles: gaze stand-in without irises


def _flip_68() -> list[int]:
    perm = list(range(68))

    def pair(a: int, b: int) -> None:
        perm[a], perm[b] = b, a

    for i in range(8):
        pair(i, 16 - i)
    for i in range(5):
        pair(17 + i, 26 - i)
    for a, b in [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46), (48, 54),
                 (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]:
        pair(a, b)
    return perm


FLIP_68 = _flip_68()


def _chain(ids, closed: bool = False) -> list[list[int]]:
    edges = [[a, b] for a, b in zip(ids[:-1], ids[1:])]
    if closed:
        edges.append([ids[-1], ids[0]])
    return edges


#: The standard 68-point line drawing: jaw, brows, nose bridge, lower nose, closed eyes and lips.
EDGES_68 = (
    _chain(range(0, 17)) + _chain(range(17, 22)) + _chain(range(22, 27)) + _chain(range(27, 31))
    + _chain(range(31, 36)) + [[30, 33]] + _chain(range(36, 42), True) + _chain(range(42, 48), True)
    + _chain(range(48, 60), True) + _chain(range(60, 68), True)
)


# ------------------------------------------------------------------------------------------------
# Missing frames and temporal smoothing
# ------------------------------------------------------------------------------------------------
def fill_missing(landmarks: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN frames of ``(T, K, 2)`` by linear interpolation between the nearest found frames
    (the first / last found frame is repeated at the ends). Returns (filled copy, number of missing frames).

    Raises DataError when no frame has landmarks.
    """
    lms = np.array(landmarks, dtype=np.float32, copy=True)
    found = np.isfinite(lms).all(axis=(1, 2))
    missing = int((~found).sum())
    if missing == 0:
        return lms, 0
    if not found.any():
        raise DataError("the landmark detector found no face in any frame")
    t = np.arange(len(lms))
    flat = lms.reshape(len(lms), -1)
    for j in range(flat.shape[1]):
        flat[~found, j] = np.interp(t[~found], t[found], flat[found, j])
    return flat.reshape(lms.shape), missing


def smooth_savgol(landmarks: np.ndarray, window: int = 5, order: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing along time of ``(T, K, 2)``: a local polynomial fit, so no lag and
    little flattening of real fast motion (mouth openings) while removing frame-to-frame jitter.
    Clips shorter than the window are returned unchanged."""
    from scipy.signal import savgol_filter

    lms = np.asarray(landmarks, dtype=np.float32)
    window = window if window % 2 else window + 1
    if len(lms) < window or window <= order:
        return lms.copy()
    return savgol_filter(lms, window, order, axis=0, mode="interp").astype(np.float32)


def smooth_one_euro(
    landmarks: np.ndarray, fps: float = 25.0, min_cutoff: float = 1.5, beta: float = 5.0, d_cutoff: float = 1.0
) -> np.ndarray:
    """One-Euro filter (Casiez et al. 2012) along time of ``(T, K, 2)``, causal (usable live).

    The cut-off frequency grows with the speed of each coordinate: slow points are smoothed hard
    (jitter gone), fast ones barely (little lag). ``min_cutoff`` in Hz, ``beta`` in 1 / (frame
    fractions per second): coordinates are fractions of the frame; with beta 5 a point moving at
    0.2 frame widths per second (a brisk head turn) is filtered at 2.5 Hz instead of 1.5 Hz.
    """
    lms = np.asarray(landmarks, dtype=np.float64)
    if len(lms) < 2:
        return lms.astype(np.float32)

    def alpha(cutoff):
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau * fps)

    out = np.empty_like(lms)
    out[0] = lms[0]
    d_prev = np.zeros_like(lms[0])
    for t in range(1, len(lms)):
        d = (lms[t] - out[t - 1]) * fps
        a_d = alpha(d_cutoff)
        d_prev = a_d * d + (1 - a_d) * d_prev
        a = alpha(min_cutoff + beta * np.abs(d_prev))
        out[t] = a * lms[t] + (1 - a) * out[t - 1]
    return out.astype(np.float32)


def smooth_landmarks(landmarks: np.ndarray, method: str = "savgol", fps: float = 25.0) -> np.ndarray:
    """Temporal smoothing switch: "none", "savgol" (offline, zero lag) or "one_euro" (causal)."""
    if method in (None, "none", False):
        return np.asarray(landmarks, dtype=np.float32)
    if method == "savgol":
        return smooth_savgol(landmarks)
    if method == "one_euro":
        return smooth_one_euro(landmarks, fps=fps)
    raise UserFacingError(f"unknown landmark smoothing {method!r}; use none, savgol or one_euro")


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------
class LandmarkSource:
    """Common interface. ``detect_raw`` may leave NaN rows for frames without a face; ``detect`` fills them."""

    name = "base"
    num_points = 0

    def detect_raw(self, frames: np.ndarray, video: bool = True) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, K, 2) float32 in [0, 1], NaN rows where no face was found.

        video=True: the frames are consecutive (trackers may use the previous frame); False: unrelated images.
        """
        raise NotImplementedError

    def detect(self, frames: np.ndarray, video: bool = True) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, K, 2) float32 in [0, 1]; frames without a face are interpolated."""
        return fill_missing(self.detect_raw(frames, video=video))[0]

    def spec(self) -> dict:
        """The ``landmarks.json`` description (name, num_points, edges, flip_permutation, eye/mouth/gaze ids)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C++-level stderr: mediapipe's bindings print a harmless protobuf 6 message at import and
    absl/TFLite log lines when a graph starts; Python errors are still raised normally."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def import_mediapipe():
    """``mediapipe.solutions.face_mesh``, or a UserFacingError that says how to install it."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with _quiet_stderr():
            import mediapipe as mp  # noqa: F401
            from mediapipe.python.solutions import face_mesh
    except ImportError as err:
        raise UserFacingError(
            f"the mediapipe landmark detector is not installed ({err}); install it with: {INSTALL_HINT} "
            "(or pass --landmarks none)"
        ) from err
    except AttributeError as err:
        raise UserFacingError(_protobuf_hint(err)) from err
    return face_mesh


def _protobuf_hint(err: Exception) -> str:
    import google.protobuf

    return (
        f"mediapipe cannot run with protobuf {google.protobuf.__version__} ({err}); "
        "mediapipe 0.10.21 works with protobuf 6.33.5: pip install --no-deps protobuf==6.33.5"
    )


class MediaPipeMesh(LandmarkSource):
    """mediapipe FaceMesh, 478 points (``refine_landmarks=True``, irises give the gaze points) or 468.

    Args:
        refine_landmarks: add the 10 iris points (478 total).
        edges: "contours" (face oval, brows, eyes, lips, plus irises: 124 (+8) lines, a sketch like the
            official landmark drawing) or "tessellation" (the full triangle mesh, 1322 (+8) lines).
        min_detection_confidence: mediapipe's face detector threshold.
    """

    def __init__(self, refine_landmarks: bool = True, edges: str = "contours", min_detection_confidence: float = 0.5):
        if edges not in ("contours", "tessellation"):
            raise UserFacingError(f"mediapipe edges must be 'contours' or 'tessellation', got {edges!r}")
        self.refine = bool(refine_landmarks)
        self.edges_kind = edges
        self.min_conf = float(min_detection_confidence)
        self.num_points = 478 if self.refine else 468
        self.name = f"mediapipe{self.num_points}-{edges}"
        self._fm = import_mediapipe()
        self._meshes: dict[bool, object] = {}

    def _mesh(self, video: bool):
        if video not in self._meshes:
            try:
                with _quiet_stderr():
                    self._meshes[video] = self._fm.FaceMesh(
                        static_image_mode=not video, max_num_faces=1, refine_landmarks=self.refine,
                        min_detection_confidence=self.min_conf, min_tracking_confidence=0.5,
                    )
            except AttributeError as err:
                raise UserFacingError(_protobuf_hint(err)) from err
        return self._meshes[video]

    def reset(self) -> None:
        """Forget the tracked face (call between unrelated videos)."""
        mesh = self._meshes.pop(True, None)
        if mesh is not None:
            mesh.close()

    def detect_raw(self, frames: np.ndarray, video: bool = True) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if video:
            self.reset()  # a new clip: do not carry the track of the previous one over
        mesh = self._mesh(video)
        out = np.full((len(frames), self.num_points, 2), np.nan, np.float32)
        with _quiet_stderr():  # TFLite / absl log lines on the first frames
            for t, frame in enumerate(frames):
                result = mesh.process(np.ascontiguousarray(frame))
                if result.multi_face_landmarks:
                    pts = result.multi_face_landmarks[0].landmark
                    out[t] = [(p.x, p.y) for p in pts[: self.num_points]]
        return out

    def spec(self) -> dict:
        fm = self._fm
        pairs = fm.FACEMESH_CONTOURS if self.edges_kind == "contours" else fm.FACEMESH_TESSELATION
        edges = [list(e) for e in sorted({(min(a, b), max(a, b)) for a, b in pairs})]
        if self.refine:
            edges += [list(e) for e in sorted({(min(a, b), max(a, b)) for a, b in fm.FACEMESH_IRISES})]
        eye_ids = sorted({i for e in fm.FACEMESH_LEFT_EYE | fm.FACEMESH_RIGHT_EYE for i in e})
        return {
            "name": self.name,
            "num_points": self.num_points,
            "edges": edges,
            "flip_permutation": list(MESH_FLIP[: self.num_points]),
            "eye_ids": eye_ids,
            "mouth_x_ids": list(_MESH_MOUTH_X),
            "mouth_y_ids": list(_MESH_MOUTH_Y),
            "gaze_ids": list(_MESH_IRIS_RING if self.refine else _MESH_EYELID_GAZE),
        }

    def close(self) -> None:
        for mesh in self._meshes.values():
            mesh.close()
        self._meshes.clear()


class MediaPipe68(LandmarkSource):
    """The iBUG-68 subset (:data:`MESH_TO_68`) of the mediapipe mesh, with the standard 68-point edges.

    68 points have no irises: the 8 gaze points are eyelid points (37, 38, 40, 41, 43, 44, 46, 47).
    """

    name = "mediapipe68"
    num_points = 68

    def __init__(self, min_detection_confidence: float = 0.5):
        self._mesh = MediaPipeMesh(refine_landmarks=False, min_detection_confidence=min_detection_confidence)

    def detect_raw(self, frames: np.ndarray, video: bool = True) -> np.ndarray:
        return self._mesh.detect_raw(frames, video=video)[:, MESH_TO_68]

    def spec(self) -> dict:
        return {
            "name": self.name,
            "num_points": 68,
            "edges": [list(e) for e in EDGES_68],
            "flip_permutation": list(FLIP_68),
            "eye_ids": list(range(36, 48)),
            "mouth_x_ids": [48, 54],
            "mouth_y_ids": [51, 57],
            "gaze_ids": [37, 38, 40, 41, 43, 44, 46, 47],
        }

    def close(self) -> None:
        self._mesh.close()


class PrecomputedLandmarks(LandmarkSource):
    """Landmarks that were computed elsewhere, in [0, 1] of the frames they belong to.

    ``landmarks``: an array (F, K, 2), a ``.npy`` file holding one, or a folder of per-frame ``(K, 2)``
    files (the official layout ``ldmks/<frame>_ldmk.npy``, read in sorted order). ``detect(frames)``
    returns the first ``len(frames)`` rows, so it is meant for the frames the landmarks were made for.
    The official 669-point set is described by the preset ``{"preset": "official669"}``.
    """

    def __init__(self, landmarks, spec: dict | None = None):
        arr = self.load(landmarks) if isinstance(landmarks, (str, Path)) else np.asarray(landmarks, np.float32)
        if arr.ndim != 3 or arr.shape[-1] != 2:
            raise DataError(f"precomputed landmarks must be (F, K, 2), got {arr.shape}")
        self.landmarks = arr
        self.num_points = arr.shape[1]
        if spec is None:
            if self.num_points != 669:
                raise DataError(
                    f"precomputed landmarks with {self.num_points} points need a spec (edges, flip permutation); "
                    "only the official 669-point set has a preset"
                )
            spec = {"preset": "official669"}
        self._spec = dict(spec)
        self.name = self._spec.get("name", self._spec.get("preset", "precomputed"))

    @staticmethod
    def load(path: str | Path) -> np.ndarray:
        """(F, K, 2) float32 from one ``.npy`` or a folder of per-frame ``*.npy`` files."""
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise DataError(f"{path}: no .npy landmark files")
            return np.stack([np.load(f).reshape(-1, 2) for f in files]).astype(np.float32)
        if not path.is_file():
            raise DataError(f"precomputed landmarks not found: {path}")
        arr = np.load(path).astype(np.float32)
        return arr[None] if arr.ndim == 2 else arr

    def detect_raw(self, frames: np.ndarray, video: bool = True) -> np.ndarray:
        if len(frames) > len(self.landmarks):
            raise DataError(f"{len(frames)} frames but only {len(self.landmarks)} precomputed landmark frames")
        return self.landmarks[: len(frames)].copy()

    def spec(self) -> dict:
        return dict(self._spec)


def make_source(kind: str) -> LandmarkSource | None:
    """CLI names -> source: "mediapipe" (478), "mediapipe468", "mediapipe68", "none" (None)."""
    if kind in (None, "none"):
        return None
    if kind == "mediapipe":
        return MediaPipeMesh(refine_landmarks=True)
    if kind == "mediapipe468":
        return MediaPipeMesh(refine_landmarks=False)
    if kind == "mediapipe-tessellation":
        return MediaPipeMesh(refine_landmarks=True, edges="tessellation")
    if kind == "mediapipe68":
        return MediaPipe68()
    raise UserFacingError(f"unknown landmark source {kind!r}; use mediapipe, mediapipe468, mediapipe68 or none")


SOURCES = ("mediapipe", "mediapipe468", "mediapipe68", "mediapipe-tessellation", "none")
