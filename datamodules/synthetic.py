"""Synthetic VoxCeleb-style talking heads: real H.264 clips plus exact dense landmarks.

Every frame is rendered from one set of 3D face points (the landmarks) after a head pose
(yaw, pitch, roll, translation, scale) and an expression (mouth opening, blinks, gaze). The
filled shapes of the face are drawn from exactly those projected points, so the landmarks saved
beside each clip lie on the drawn face to sub-pixel precision (up to video compression).

Landmark coordinates follow the data contract: float32 ``(F, K, 2)``, x right, y down, in
``[0, 1]`` of the frame, with pixel centres at half-integers: ``x = (column + 0.5) / W``
(the ``align_corners=False`` convention), so a horizontal flip is exactly ``x -> 1 - x``.

With ``personal_details=True`` (``mp-lightning synth --personal-details``) every person also carries
what one source frame cannot show (:class:`PersonalDetails`): teeth of their own colour with a gap or
a gold tooth, drawn only inside the open mouth; a mark on one side of the head and an earring on the
other, each drawn only while that side turns towards the camera. Every clip then starts frontal with
the mouth closed (the pose and expression ease in over :data:`NEUTRAL_START_FRAMES` frames), so its
first frame, the source a personalization benchmark animates, hides all three. The details come from
their own random stream: the rest of each person and every motion are those of the default data.

Layout written by :func:`write_synthetic_dataset`::

    OUT/landmarks.json
    OUT/{train,test}/<identity>/<video>/<clip>.mp4             (layout "vox")
    OUT/{train,test}/<identity>/<video>/<clip>.landmarks.npy
    OUT/{train,test}/<identity>#<video>#<clip>/<frame:07d>.png   (layout "vox-png", FOMM's)
    OUT/{train,test}/<identity>#<video>#<clip>.landmarks.npy
    OUT/semantics.json and <clip>.semantics.npy beside each landmarks file: the exact motion
    descriptors of every frame (PIRender's input, see :mod:`datamodules.semantics`)
"""
from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mp_lightning.io.video import write_video

#: GOP length (frames between keyframes) of the written clips. Random access to one frame
#: decodes from the previous keyframe, so a short GOP bounds the cost of reading 2 frames of a
#: clip; 8 costs ~25% more bytes than 250 at these sizes (see benchmarks/data_loading.py).
DEFAULT_GOP = 8
#: x264 constant rate factor: visually lossless for the flat synthetic shapes.
DEFAULT_CRF = 18
FPS = 25

# ----------------------------------------------------------------------------------------------
# Landmark set "synthetic-v1": index layout
# ----------------------------------------------------------------------------------------------
N_CONTOUR = 40  # closed face outline, index 0 at the top of the forehead, clockwise on screen
N_BROW = 9  # per side, inner end -> outer end
N_EYE = 16  # per side, closed lid loop: inner corner, 7 upper, outer corner, 7 lower
N_IRIS = 9  # per side, 8 ring points then the centre
N_BRIDGE = 5  # nose bridge on the midline, top -> tip
N_NOSTRIL = 9  # lower nose arc, image-left alar -> columella -> image-right alar
N_OUTER_LIP = 20  # closed: left corner, 9 upper (left -> right), right corner, 9 lower (right -> left)
N_INNER_LIP = 16  # same scheme with 7 points per lip


def _layout() -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    start = 0

    def take(name: str, n: int) -> None:
        nonlocal start
        groups[name] = list(range(start, start + n))
        start += n

    take("contour", N_CONTOUR)
    for side in ("left", "right"):  # "left" = image left (x < 0.5 for a frontal face)
        take(f"{side}_brow", N_BROW)
        take(f"{side}_eye", N_EYE)
        take(f"{side}_iris", N_IRIS)
    take("nose_bridge", N_BRIDGE)
    take("nostrils", N_NOSTRIL)
    take("outer_lips", N_OUTER_LIP)
    take("inner_lips", N_INNER_LIP)
    return groups


GROUPS = _layout()
NUM_POINTS = sum(len(v) for v in GROUPS.values())


def landmark_spec() -> dict:
    """The ``landmarks.json`` description of the synthetic landmark set (see the data contract)."""
    g = GROUPS
    edges: list[list[int]] = []

    def chain(ids, closed=False):
        for a, b in zip(ids[:-1], ids[1:]):
            edges.append([a, b])
        if closed:
            edges.append([ids[-1], ids[0]])

    chain(g["contour"], closed=True)
    for side in ("left", "right"):
        chain(g[f"{side}_brow"])
        chain(g[f"{side}_eye"], closed=True)
        chain(g[f"{side}_iris"][:8], closed=True)
    chain(g["nose_bridge"])
    chain(g["nostrils"])
    edges.append([g["nose_bridge"][-1], g["nostrils"][N_NOSTRIL // 2]])
    chain(g["outer_lips"], closed=True)
    chain(g["inner_lips"], closed=True)

    perm = list(range(NUM_POINTS))
    for i, idx in enumerate(g["contour"]):
        perm[idx] = g["contour"][(N_CONTOUR - i) % N_CONTOUR]
    for part in ("brow", "eye", "iris"):
        for a, b in zip(g[f"left_{part}"], g[f"right_{part}"]):
            perm[a], perm[b] = b, a
    for i, idx in enumerate(g["nostrils"]):
        perm[idx] = g["nostrils"][N_NOSTRIL - 1 - i]
    for i, idx in enumerate(g["outer_lips"]):
        perm[idx] = g["outer_lips"][(N_OUTER_LIP // 2 - i) % N_OUTER_LIP]
    for i, idx in enumerate(g["inner_lips"]):
        perm[idx] = g["inner_lips"][(N_INNER_LIP // 2 - i) % N_INNER_LIP]

    eye_ids = []
    for side in ("left", "right"):
        e = g[f"{side}_eye"]
        eye_ids += [e[0], e[4], e[8], e[12]]  # inner corner, upper middle, outer corner, lower middle
    gaze_ids = []
    for side in ("left", "right"):
        gaze_ids += [g[f"{side}_iris"][k] for k in (0, 2, 4, 6)]
    outer = g["outer_lips"]
    return {
        "name": "synthetic-v1",
        "num_points": NUM_POINTS,
        "edges": edges,
        "flip_permutation": perm,
        "eye_ids": eye_ids,
        "mouth_x_ids": [outer[0], outer[N_OUTER_LIP // 2]],
        "mouth_y_ids": [outer[N_OUTER_LIP // 4], outer[3 * N_OUTER_LIP // 4]],
        "gaze_ids": gaze_ids,
        "groups": {k: v for k, v in GROUPS.items()},
        "subsets": {"sparse68": _sparse68(g)},
    }


def _sparse68(g: dict) -> dict:
    """A 68-point subset laid out like the iBUG 68 landmarks (jaw 17, brows 5+5, nose 4+5, eyes 6+6,
    lips 12+8), for the paper's dense-versus-sparse warping ablation (`data.landmark_subset=sparse68`).

    `ids` index the dense set; `edges` and the box/gaze ids index the subset. 68 points have no irises,
    so the gaze points are eye-lid points, as in the mediapipe 68-point subset.
    """
    picks = {
        "jaw": [g["contour"][int(i)] for i in np.round(np.linspace(10, 30, 17))],
        "left_brow": [g["left_brow"][k] for k in (0, 2, 4, 6, 8)],
        "right_brow": [g["right_brow"][k] for k in (0, 2, 4, 6, 8)],
        "nose_bridge": g["nose_bridge"][1:],
        "nostrils": [g["nostrils"][k] for k in (0, 2, 4, 6, 8)],
        "left_eye": [g["left_eye"][k] for k in (0, 3, 5, 8, 11, 13)],
        "right_eye": [g["right_eye"][k] for k in (0, 3, 5, 8, 11, 13)],
        "outer_lips": [g["outer_lips"][k] for k in (0, 2, 3, 5, 7, 8, 10, 12, 13, 15, 17, 18)],
        "inner_lips": [g["inner_lips"][k] for k in range(0, 16, 2)],
    }
    ids = [i for part in picks.values() for i in part]
    pos = {old: new for new, old in enumerate(ids)}
    edges: list[list[int]] = []

    def chain(part, closed=False):
        new = [pos[i] for i in picks[part]]
        edges.extend([a, b] for a, b in zip(new[:-1], new[1:]))
        if closed:
            edges.append([new[-1], new[0]])

    for part in ("jaw", "left_brow", "right_brow", "nose_bridge", "nostrils"):
        chain(part)
    edges.append([pos[picks["nose_bridge"][-1]], pos[picks["nostrils"][2]]])
    for part in ("left_eye", "right_eye", "outer_lips", "inner_lips"):
        chain(part, closed=True)
    eye = [pos[picks[f"{side}_eye"][k]] for side in ("left", "right") for k in (0, 1, 3, 4)]
    outer = [pos[i] for i in picks["outer_lips"]]
    return {"ids": ids, "edges": edges, "eye_ids": eye, "gaze_ids": eye,
            "mouth_x_ids": [outer[0], outer[6]], "mouth_y_ids": [outer[3], outer[9]]}


# ----------------------------------------------------------------------------------------------
# Identity appearance and face geometry
# ----------------------------------------------------------------------------------------------
_SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 94], [160, 102, 66], [110, 70, 46]],
    dtype=np.float64,
)
_HAIR = np.array(
    [[20, 16, 14], [60, 40, 25], [110, 75, 40], [190, 150, 90], [150, 60, 30], [140, 140, 140], [230, 220, 200]],
    dtype=np.float64,
)
_IRIS = np.array([[70, 45, 25], [40, 90, 160], [60, 120, 70], [110, 100, 60], [90, 90, 110]], dtype=np.float64)


@dataclass
class Identity:
    """Appearance of one synthetic person (all lengths in head units, face half-height ~1.2)."""

    face_w: float
    face_h: float
    jaw_taper: float
    eye_x: float  # distance of each eye centre from the midline
    eye_y: float
    eye_w: float
    eye_h: float
    iris_r: float
    brow_y: float
    brow_arch: float
    brow_thick: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_thick: float
    hair_thick: float
    hair_len: float  # how far the hair reaches down the sides, in face half-heights
    skin: tuple
    hair: tuple
    iris: tuple
    lips: tuple
    shirt: tuple
    background: dict


def _color(rng, palette, jitter):
    c = palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3)
    return tuple(float(v) for v in np.clip(c, 0, 255))


def make_identity(rng: np.random.Generator) -> Identity:
    skin = _color(rng, _SKIN_TONES, 8)
    lips = tuple(float(v) for v in np.clip(np.array(skin) * [0.8, 0.5, 0.5] + [30, 0, 0], 0, 255))
    kind = ["stripes", "checker", "rings", "gradient_dots"][rng.integers(4)]
    background = {
        "kind": kind,
        "a": tuple(float(v) for v in rng.uniform(30, 230, 3)),
        "b": tuple(float(v) for v in rng.uniform(30, 230, 3)),
        "freq": float(rng.uniform(3, 9)),
        "angle": float(rng.uniform(0, math.pi)),
        "phase": float(rng.uniform(0, 2 * math.pi)),
    }
    return Identity(
        face_w=rng.uniform(0.78, 0.95),
        face_h=rng.uniform(1.12, 1.3),
        jaw_taper=rng.uniform(0.15, 0.5),
        eye_x=rng.uniform(0.34, 0.42),
        eye_y=rng.uniform(-0.22, -0.12),
        eye_w=rng.uniform(0.24, 0.3),
        eye_h=rng.uniform(0.07, 0.1),
        iris_r=rng.uniform(0.055, 0.07),
        brow_y=rng.uniform(-0.45, -0.36),
        brow_arch=rng.uniform(0.02, 0.07),
        brow_thick=rng.uniform(0.035, 0.07),
        nose_len=rng.uniform(0.32, 0.42),
        nose_w=rng.uniform(0.12, 0.18),
        mouth_y=rng.uniform(0.52, 0.62),
        mouth_w=rng.uniform(0.22, 0.3),
        lip_thick=rng.uniform(0.04, 0.07),
        hair_thick=rng.uniform(0.08, 0.25),
        hair_len=rng.uniform(-0.2, 0.9),
        skin=skin,
        hair=_color(rng, _HAIR, 10),
        iris=_color(rng, _IRIS, 10),
        lips=lips,
        shirt=tuple(float(v) for v in rng.uniform(20, 235, 3)),
        background=background,
    )


# ----------------------------------------------------------------------------------------------
# What one source frame cannot show (personal_details=True)
# ----------------------------------------------------------------------------------------------
#: frames over which a clip's pose and expression ease in from frontal with the mouth closed
NEUTRAL_START_FRAMES = 4
#: the lips part this much wider (head units) than in the default data, so the teeth cover pixels at 64 px
_DETAIL_MOUTH_GAP = 0.3
_TEETH = np.array([[250, 250, 240], [235, 225, 190], [215, 200, 160]], dtype=np.float64)
_MARK = np.array([[200, 30, 40], [30, 60, 200], [30, 160, 60], [120, 40, 160], [240, 160, 20]], dtype=np.float64)


@dataclass
class PersonalDetails:
    """Per-person appearance that only some poses and expressions reveal."""

    teeth: tuple  # RGB of the teeth, seen only inside the open mouth
    tooth_mark: str  # "gap" (a dark missing tooth) or "gold"
    tooth_x: float  # where along the mouth width (-1 .. 1) the marked tooth is
    mark_side: int  # -1: image-left side of the head, +1: right; the earring is on the other side
    mark: tuple  # RGB of the side mark
    mark_y: float  # its height on the head (head units, y down)
    mark_radius: float
    earring: tuple  # RGB of the earring
    earring_radius: float


def make_personal_details(rng: np.random.Generator) -> PersonalDetails:
    return PersonalDetails(
        teeth=_color(rng, _TEETH, 6),
        tooth_mark=["gap", "gold"][rng.integers(2)],
        tooth_x=float(rng.uniform(-0.6, 0.6)),
        mark_side=int(rng.choice([-1, 1])),
        mark=_color(rng, _MARK, 15),
        mark_y=float(rng.uniform(-0.45, 0.25)),
        mark_radius=float(rng.uniform(0.24, 0.32)),
        earring=_color(rng, _MARK, 30),
        earring_radius=float(rng.uniform(0.14, 0.2)),
    )


def _details_rng(seed: int, identity_index: int) -> np.random.Generator:
    # a stream of its own: the default data's identities and motions are unchanged by the switch
    return np.random.default_rng(np.random.SeedSequence([seed, 3, identity_index]))


def neutral_start(motion: "ClipMotion", frames: int = NEUTRAL_START_FRAMES) -> "ClipMotion":
    """The clip eases in from a frontal pose with the mouth closed: frame 0 shows no side and no teeth."""
    ramp = np.clip(np.arange(len(motion.yaw)) / max(frames, 1), 0, 1)
    return dataclasses.replace(motion, yaw=motion.yaw * ramp, pitch=motion.pitch * ramp, roll=motion.roll * ramp,
                               mouth=motion.mouth * ramp)


def _side_visibility(normal: np.ndarray, motion: "ClipMotion", f: int, threshold: float, soft: float = 0.12) -> float:
    """0..1: how far a head-fixed surface normal has turned towards the camera (+z) past `threshold`."""
    n = _rotation(motion.yaw[f], motion.pitch[f], motion.roll[f]) @ (normal / np.linalg.norm(normal))
    return float(np.clip((n[2] - threshold) / soft, 0, 1))


def _blend_disc(img: np.ndarray, centre: np.ndarray, radius: float, color: tuple, alpha: float, clip_to=None) -> None:
    import cv2

    if alpha <= 0 or radius <= 0:
        return
    size = img.shape[0]
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, tuple(int(v) for v in _fx(centre)), int(round(radius * _ONE)), 255, -1, cv2.LINE_AA, _SHIFT)
    if clip_to is not None:
        mask = np.minimum(mask, clip_to)
    a = mask.astype(np.float32)[..., None] / 255.0 * alpha
    img[:] = (img * (1 - a) + np.array(color, np.float32) * a).astype(np.uint8)


def draw_personal_details(img: np.ndarray, ident: "Identity", details: PersonalDetails, motion: "ClipMotion", f: int,
                          pts: np.ndarray, size: int) -> None:
    """Teeth inside the open mouth; the side mark and the earring where their side faces the camera."""
    import cv2

    g = GROUPS
    s = 0.27 * size * motion.scale[f]
    inner = _fx(pts[g["inner_lips"]])
    mouth = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mouth, [inner], 255, cv2.LINE_AA, _SHIFT)
    # a closed mouth is a degenerate polygon that anti-aliasing still paints: no teeth until the lips part a pixel
    opening = float(np.ptp(pts[g["inner_lips"]][:, 1]))
    if opening >= 1.0:
        # upper teeth: the top of the mouth opening, the marked tooth a vertical band across them
        teeth = np.zeros_like(img)
        teeth[:] = details.teeth
        upper = pts[g["inner_lips"]][: N_INNER_LIP // 2 + 1]
        lower = pts[g["inner_lips"]][N_INNER_LIP // 2:]
        mid_y = 0.5 * (upper[:, 1].mean() + lower[:, 1].mean())
        band = np.zeros((size, size), np.uint8)
        poly = np.concatenate([upper, upper[::-1] * np.array([1.0, 0.0]) + np.array([0.0, mid_y])])
        cv2.fillPoly(band, [_fx(poly)], 255, cv2.LINE_AA, _SHIFT)
        left, right = pts[g["inner_lips"][0]], pts[g["inner_lips"][N_INNER_LIP // 2]]
        centre = left + (right - left) * (0.5 + 0.5 * details.tooth_x)
        half = 0.05 * s
        tooth = np.array([[centre[0] - half, upper[:, 1].min() - s], [centre[0] + half, upper[:, 1].min() - s],
                          [centre[0] + half, mid_y], [centre[0] - half, mid_y]])
        cv2.fillPoly(teeth, [_fx(tooth)], (20, 5, 5) if details.tooth_mark == "gap" else (230, 180, 30),
                     cv2.LINE_AA, _SHIFT)
        a = (np.minimum(band, mouth).astype(np.float32) / 255.0)[..., None]
        img[:] = (img * (1 - a) + teeth * a).astype(np.uint8)
    side = details.mark_side
    # the mark sits on the cheek near the face outline, facing sideways: hidden frontally, seen as the head turns
    mark_3d = np.array([[side * ident.face_w * 0.72, details.mark_y, 0.1]])
    vis = _side_visibility(np.array([side * 1.0, 0.0, 0.3]), motion, f, threshold=0.42)
    face = np.zeros((size, size), np.uint8)
    cv2.fillPoly(face, [_fx(pts[g["contour"]])], 255, cv2.LINE_AA, _SHIFT)
    _blend_disc(img, project(mark_3d, motion, f, size)[0], details.mark_radius * s, details.mark, vis, clip_to=face)
    ear_3d = np.array([[-side * ident.face_w * 1.02, 0.2, -0.05]])
    vis = _side_visibility(np.array([-side * 1.0, 0.0, -0.2]), motion, f, threshold=-0.02)
    _blend_disc(img, project(ear_3d, motion, f, size)[0], details.earring_radius * s, details.earring, vis)


def face_points(ident: Identity, mouth_open: float, eye_open: tuple, gaze: tuple, max_gap: float = 0.16) -> np.ndarray:
    """Canonical 3D landmarks ``(K, 3)`` in head units (x right, y down, z towards the camera).

    mouth_open in [0, 1]; eye_open per image side in [0, 1] (0 = closed); gaze (dx, dy) in
    fractions of the eye size.
    """
    P = np.zeros((NUM_POINTS, 3))
    g = GROUPS
    t = 2 * np.pi * np.arange(N_CONTOUR) / N_CONTOUR
    x = ident.face_w * np.sin(t)
    y = -ident.face_h * np.cos(t)
    lower = np.clip(y / ident.face_h, 0, 1)
    x = x * (1 - ident.jaw_taper * lower**2)
    P[g["contour"]] = np.stack([x, y, 0.1 * np.ones_like(x)], 1)

    for s, side in ((-1, "left"), (1, "right")):
        u = np.linspace(0, 1, N_BROW)
        bx = s * (ident.eye_x - ident.eye_w * 0.55 + u * ident.eye_w * 1.25)
        by = ident.brow_y - ident.brow_arch * np.sin(np.pi * np.clip(u * 1.1, 0, 1))
        P[g[f"{side}_brow"]] = np.stack([bx, by, 0.55 - 0.15 * u], 1)

        opening = float(np.clip(eye_open[0 if s < 0 else 1], 0, 1))
        upper_u = np.linspace(0, 1, 9)  # includes both corners
        lower_u = np.linspace(1, 0, 9)[1:-1]
        ex = ident.eye_x - ident.eye_w / 2
        # the upper lid travels down onto the lower lid when the eye closes
        sin_u = np.sin(np.pi * upper_u)
        up_y = ident.eye_y - ident.eye_h * opening * sin_u + 0.6 * ident.eye_h * (1 - opening) * sin_u
        low_y = ident.eye_y + 0.6 * ident.eye_h * np.sin(np.pi * lower_u)
        eu = np.concatenate([upper_u, lower_u])
        eyx = s * (ex + eu * ident.eye_w)
        eyy = np.concatenate([up_y, low_y])
        P[g[f"{side}_eye"]] = np.stack([eyx, eyy, 0.5 - 0.1 * eu], 1)

        cx = s * ident.eye_x + gaze[0] * ident.eye_w * 0.25
        cy = ident.eye_y + gaze[1] * ident.eye_h * 0.3
        phi = 2 * np.pi * np.arange(8) / 8
        rx = cx + s * ident.iris_r * np.sin(phi)
        ry = cy - ident.iris_r * np.cos(phi)
        iris = np.stack([np.append(rx, cx), np.append(ry, cy), np.full(9, 0.52)], 1)
        P[g[f"{side}_iris"]] = iris

    v = np.linspace(0, 1, N_BRIDGE)
    top = ident.eye_y - 0.02
    P[g["nose_bridge"]] = np.stack([np.zeros(N_BRIDGE), top + v * ident.nose_len, 0.55 + 0.4 * v], 1)
    j = np.linspace(-1, 1, N_NOSTRIL)
    ny = top + ident.nose_len + 0.07 - 0.05 * j**2 - 0.02 * np.cos(np.pi * j * 2) ** 2
    P[g["nostrils"]] = np.stack([j * ident.nose_w, ny, 0.72 - 0.12 * j**2], 1)

    m = float(np.clip(mouth_open, 0, 1))
    gap = max_gap * m
    width = ident.mouth_w * (1 - 0.12 * m)
    k = np.arange(N_OUTER_LIP)
    ang = np.pi * k / (N_OUTER_LIP // 2)
    ox = -width * np.cos(ang)
    bow = 1 - 0.35 * np.exp(-((ox / (0.25 * width)) ** 2))  # cupid's bow dip in the upper lip
    sn = np.abs(np.sin(ang))
    oy = np.where(
        k <= N_OUTER_LIP // 2,
        ident.mouth_y - (ident.lip_thick * bow + gap / 2) * sn,
        ident.mouth_y + (ident.lip_thick * 1.2 + gap / 2) * sn,
    )
    P[g["outer_lips"]] = np.stack([ox, oy, 0.55 + 0.05 * sn], 1)
    k = np.arange(N_INNER_LIP)
    ang = np.pi * k / (N_INNER_LIP // 2)
    sn = np.abs(np.sin(ang))
    ix = -width * 0.82 * np.cos(ang)
    iy = np.where(k <= N_INNER_LIP // 2, ident.mouth_y - gap / 2 * sn, ident.mouth_y + gap / 2 * sn)
    P[g["inner_lips"]] = np.stack([ix, iy, 0.56 + 0.04 * sn], 1)
    return P


def _hair_points(ident: Identity) -> np.ndarray:
    """Closed hair outline behind the face, in the same 3D head coordinates."""
    t = np.linspace(-0.62 * np.pi, 0.62 * np.pi, 25)
    r = 1 + ident.hair_thick
    outer = np.stack([ident.face_w * r * np.sin(t), -ident.face_h * (1 + 0.8 * ident.hair_thick) * np.cos(t)], 1)
    low = ident.face_h * ident.hair_len
    pts = [[-ident.face_w * r * 1.02, low]] + outer.tolist() + [[ident.face_w * r * 1.02, low]]
    inner_t = np.linspace(0.5 * np.pi, -0.5 * np.pi, 15)
    pts += np.stack([ident.face_w * 0.9 * np.sin(inner_t), -ident.face_h * 0.55 * np.cos(inner_t) - 0.1], 1).tolist()
    pts = np.array(pts)
    return np.concatenate([pts, np.full((len(pts), 1), -0.2)], 1)


def _neck_points(ident: Identity) -> np.ndarray:
    w = ident.face_w * 0.45
    pts = np.array([[-w, 0.5], [w, 0.5], [w, 2.2], [-w, 2.2]])
    return np.concatenate([pts, np.full((4, 1), -0.3)], 1)


def _shirt_points(ident: Identity) -> np.ndarray:
    pts = np.array([[-2.2, 3.0], [-1.6, 1.55], [-0.5, 1.35], [0.5, 1.35], [1.6, 1.55], [2.2, 3.0]])
    return np.concatenate([pts, np.full((len(pts), 1), -0.3)], 1)


def render_background(bg: dict, size: int) -> np.ndarray:
    """Per-identity background pattern, ``(size, size, 3)`` uint8 RGB."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    a, b = np.array(bg["a"]), np.array(bg["b"])
    f, th, ph = bg["freq"], bg["angle"], bg["phase"]
    u = xx * math.cos(th) + yy * math.sin(th)
    kind = bg["kind"]
    if kind == "stripes":
        w = 0.5 + 0.5 * np.sin(2 * np.pi * f * u + ph)
    elif kind == "checker":
        v = -xx * math.sin(th) + yy * math.cos(th)
        w = 0.5 + 0.5 * np.sin(np.pi * f * u + ph) * np.sin(np.pi * f * v)
    elif kind == "rings":
        r = np.hypot(xx - 0.5 - 0.2 * math.cos(ph), yy - 0.5 - 0.2 * math.sin(ph))
        w = 0.5 + 0.5 * np.cos(2 * np.pi * f * r)
    else:
        v = -xx * math.sin(th) + yy * math.cos(th)
        dots = (np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * v)) > 0.6
        w = np.clip(u, 0, 1) * 0.8 + 0.2 * dots
    img = a[None, None] * (1 - w[..., None]) + b[None, None] * w[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Motion and expression
# ----------------------------------------------------------------------------------------------
def _smooth_curve(rng: np.random.Generator, n: int, amplitude: float, cycles=(0.3, 2.0)) -> np.ndarray:
    """Sum of 3 random sinusoids over n frames, roughly within +-amplitude."""
    t = np.arange(n) / max(n, 1)
    out = np.zeros(n)
    for _ in range(3):
        out += np.sin(2 * np.pi * rng.uniform(*cycles) * t + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.3, 1.0)
    return amplitude * out / 2.0


@dataclass
class ClipMotion:
    yaw: np.ndarray  # radians, per frame
    pitch: np.ndarray
    roll: np.ndarray
    tx: np.ndarray  # fraction of the frame
    ty: np.ndarray
    scale: np.ndarray
    mouth: np.ndarray  # [0, 1]
    eye_open: np.ndarray  # (F, 2) in [0, 1]
    gaze: np.ndarray  # (F, 2)


def make_motion(rng: np.random.Generator, n: int) -> ClipMotion:
    d = math.pi / 180
    base_yaw = rng.uniform(-10, 10) * d
    mouth = np.clip(0.5 + 0.5 * np.sin(2 * np.pi * np.cumsum(rng.uniform(0.03, 0.12, n))) + _smooth_curve(rng, n, 0.3), 0, 1)
    eye = np.ones(n)
    frame = int(rng.integers(3, 30))
    while frame < n:  # blinks: close over 2 frames, open over 2
        for off, val in enumerate((0.5, 0.0, 0.0, 0.5)):
            if frame + off < n:
                eye[frame + off] = val
        frame += int(rng.integers(25, 70))
    eye = np.clip(eye * rng.uniform(0.85, 1.0), 0, 1)
    return ClipMotion(
        yaw=np.clip(base_yaw + _smooth_curve(rng, n, 18 * d), -28 * d, 28 * d),
        pitch=_smooth_curve(rng, n, 10 * d),
        roll=_smooth_curve(rng, n, 8 * d),
        tx=_smooth_curve(rng, n, 0.035),
        ty=_smooth_curve(rng, n, 0.03),
        scale=1 + _smooth_curve(rng, n, 0.06),
        mouth=mouth,
        eye_open=np.stack([eye, eye], 1),
        gaze=np.stack([_smooth_curve(rng, n, 0.6, (0.2, 1.0)), _smooth_curve(rng, n, 0.4, (0.2, 1.0))], 1),
    )


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Rz @ Rx @ Ry


def project(points: np.ndarray, motion: ClipMotion, f: int, size: int) -> np.ndarray:
    """3D head points ``(N, 3)`` -> continuous pixel coordinates ``(N, 2)`` (pixel centres at integers)."""
    R = _rotation(motion.yaw[f], motion.pitch[f], motion.roll[f])
    centre = np.array([0.0, 0.0, -0.3])  # rotate about a point inside the head, like a neck pivot
    p = (points - centre) @ R.T + centre
    s = 0.27 * size * motion.scale[f]
    cx = size * (0.5 + motion.tx[f])
    cy = size * (0.47 + motion.ty[f])
    return np.stack([cx + s * p[:, 0], cy + s * p[:, 1]], 1) - 0.5


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
_SHIFT = 4  # cv2 fixed-point sub-pixel bits: polygons are placed to 1/16 px
_ONE = 1 << _SHIFT


def _fx(pts: np.ndarray) -> np.ndarray:
    return np.round(pts * _ONE).astype(np.int32)


def render_frame(ident: Identity, motion: ClipMotion, f: int, size: int, background: np.ndarray,
                 details: PersonalDetails | None = None):
    """One frame ``(size, size, 3)`` uint8 RGB and its landmarks ``(K, 2)`` in [0, 1]; `details` are drawn on top."""
    import cv2

    img = background.copy()
    aa = cv2.LINE_AA
    P3 = face_points(ident, motion.mouth[f], tuple(motion.eye_open[f]), tuple(motion.gaze[f]),
                     max_gap=0.16 if details is None else _DETAIL_MOUTH_GAP)
    pts = project(P3, motion, f, size)
    g = GROUPS
    s = 0.27 * size * motion.scale[f]

    shade = tuple(c * 0.8 for c in ident.skin)
    cv2.fillPoly(img, [_fx(project(_shirt_points(ident), motion, f, size))], ident.shirt, aa, _SHIFT)
    cv2.fillPoly(img, [_fx(project(_neck_points(ident), motion, f, size))], shade, aa, _SHIFT)
    cv2.fillPoly(img, [_fx(project(_hair_points(ident), motion, f, size))], ident.hair, aa, _SHIFT)
    cv2.fillPoly(img, [_fx(pts[g["contour"]])], ident.skin, aa, _SHIFT)

    for side in ("left", "right"):
        eye = _fx(pts[g[f"{side}_eye"]])
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [eye], 255, aa, _SHIFT)
        iris_layer = np.empty_like(img)
        iris_layer[:] = (245, 245, 240)
        cv2.fillPoly(iris_layer, [_fx(pts[g[f"{side}_iris"][:8]])], ident.iris, aa, _SHIFT)
        c = pts[g[f"{side}_iris"][8]]
        cv2.circle(iris_layer, tuple(int(v) for v in _fx(c)), int(round(0.45 * ident.iris_r * s * _ONE)), (15, 15, 15), -1, aa, _SHIFT)
        alpha = mask.astype(np.float32)[..., None] / 255.0
        ys, xs = np.nonzero(mask)
        if len(ys):
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            a = alpha[y0:y1, x0:x1]
            img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] * (1 - a) + iris_layer[y0:y1, x0:x1] * a).astype(np.uint8)
        cv2.polylines(img, [eye[: N_EYE // 2 + 1]], False, (40, 30, 30), max(1, int(0.02 * s)), aa, _SHIFT)
        cv2.polylines(img, [_fx(pts[g[f"{side}_brow"]])], False, ident.hair, max(1, int(round(ident.brow_thick * s))), aa, _SHIFT)

    nose_col = tuple(c * 0.65 for c in ident.skin)
    cv2.polylines(img, [_fx(pts[g["nose_bridge"]])], False, tuple(c * 0.88 for c in ident.skin), max(1, int(0.025 * s)), aa, _SHIFT)
    cv2.polylines(img, [_fx(pts[g["nostrils"]])], False, nose_col, max(1, int(0.03 * s)), aa, _SHIFT)
    cv2.fillPoly(img, [_fx(pts[g["outer_lips"]])], ident.lips, aa, _SHIFT)
    cv2.fillPoly(img, [_fx(pts[g["inner_lips"]])], (45, 10, 15), aa, _SHIFT)
    if details is not None:
        draw_personal_details(img, ident, details, motion, f, pts, size)

    lms = (pts + 0.5) / size
    return img, lms.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
@dataclass
class _ClipJob:
    out: str
    split: str
    identity_index: int
    identity: str
    video: str
    clip: str
    frames: int
    size: int
    seed: int
    layout: str
    gop: int
    crf: int
    personal_details: bool = False


def _identity_rng(seed: int, identity_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 1, identity_index]))


def _write_clip(job: _ClipJob) -> str:
    import cv2

    ident = make_identity(_identity_rng(job.seed, job.identity_index))
    bg = render_background(ident.background, job.size)
    clip_rng = np.random.default_rng(
        np.random.SeedSequence([job.seed, 2, job.identity_index, int(job.video[1:]), int(job.clip)])
    )
    motion = make_motion(clip_rng, job.frames)
    details = None
    if job.personal_details:
        details = make_personal_details(_details_rng(job.seed, job.identity_index))
        motion = neutral_start(motion)
    frames = np.empty((job.frames, job.size, job.size, 3), np.uint8)
    lms = np.empty((job.frames, NUM_POINTS, 2), np.float32)
    for f in range(job.frames):
        frames[f], lms[f] = render_frame(ident, motion, f, job.size, bg, details)
    from datamodules.semantics import synthetic_semantics

    semantics = synthetic_semantics(motion, job.size)
    split_dir = Path(job.out) / job.split
    if job.layout == "vox":
        clip_dir = split_dir / job.identity / job.video
        clip_dir.mkdir(parents=True, exist_ok=True)
        # one thread per clip: deterministic output, and parallelism comes from the clip pool
        write_video(clip_dir / f"{job.clip}.mp4", frames, fps=FPS, crf=job.crf, gop=job.gop, preset="veryfast",
                    threads=1, fixed_gop=True)
        np.save(clip_dir / f"{job.clip}.landmarks.npy", lms)
        np.save(clip_dir / f"{job.clip}.semantics.npy", semantics)
        return f"{job.split}/{job.identity}/{job.video}/{job.clip}"
    name = f"{job.identity}#{job.video}#{job.clip}"
    clip_dir = split_dir / name
    clip_dir.mkdir(parents=True, exist_ok=True)
    for f in range(job.frames):
        cv2.imwrite(str(clip_dir / f"{f:07d}.png"), frames[f][..., ::-1])
    np.save(split_dir / f"{name}.landmarks.npy", lms)
    np.save(split_dir / f"{name}.semantics.npy", semantics)
    return f"{job.split}/{name}"


def write_synthetic_dataset(
    out: str | os.PathLike,
    identities: int = 6,
    videos_per_identity: int = 2,
    clips_per_video: int = 2,
    frames: int = 32,
    size: int = 64,
    seed: int = 0,
    layout: str = "vox",
    test_fraction: float = 0.25,
    workers: int | None = None,
    gop: int = DEFAULT_GOP,
    crf: int = DEFAULT_CRF,
    personal_details: bool = False,
) -> dict:
    """Write a synthetic VoxCeleb-style dataset to ``out`` and return a summary dict.

    The last ``round(identities * test_fraction)`` identities (at least 2 when there are 4 or
    more identities, at least 1 when there are 2 or 3, none when test_fraction is 0) go to ``test``, the rest to ``train``; the two sets are
    disjoint. ``workers`` processes render clips in parallel (None: one per CPU; 0: in this
    process). The output is a pure function of the arguments (except ``workers``).
    ``personal_details``: identities carry details one source frame cannot show (see the module docstring).
    """
    from mp_lightning.errors import DataError

    if layout not in ("vox", "vox-png"):
        raise DataError(f"unknown layout {layout!r}; use 'vox' or 'vox-png'")
    if identities < 1 or videos_per_identity < 1 or clips_per_video < 1 or frames < 1:
        raise DataError("identities, videos-per-identity, clips-per-video and frames must be >= 1")
    if size < 16 or size % 2:
        raise DataError(f"--size must be an even number >= 16 (H.264 yuv420p), got {size}")
    if not 0 <= test_fraction < 1:
        raise DataError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_test = int(round(identities * test_fraction))
    if test_fraction > 0 and identities >= 2:
        # at least 2 test identities when possible, so that cross-identity evaluation works
        n_test = min(max(n_test, 2 if identities >= 4 else 1), identities - 1)
    jobs = []
    for i in range(identities):
        split = "test" if i >= identities - n_test else "train"
        for v in range(videos_per_identity):
            for c in range(clips_per_video):
                jobs.append(
                    _ClipJob(str(out), split, i, f"id{i:05d}", f"v{v:03d}", f"{c:05d}", frames, size, seed, layout, gop, crf,
                             personal_details)
                )
    start = time.perf_counter()
    if workers is None:
        workers = min(os.cpu_count() or 1, len(jobs))
    if workers <= 1 or len(jobs) == 1:
        written = [_write_clip(j) for j in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            written = pool.map(_write_clip, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    spec = landmark_spec()
    (out / "landmarks.json").write_text(json.dumps(spec, indent=1) + "\n")
    from datamodules.semantics import write_semantics_description

    write_semantics_description(out, "synthetic", note="exact generating parameters, see datamodules.semantics")
    return {
        "root": str(out),
        "clips": written,
        "train_identities": identities - n_test,
        "test_identities": n_test,
        "num_points": spec["num_points"],
        "personal_details": personal_details,
        "seconds": time.perf_counter() - start,
    }
