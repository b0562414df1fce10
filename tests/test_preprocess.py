"""Preprocessing on a real face (scikit-image's astronaut photo, shipped in the wheel): MTCNN, mediapipe
landmarks, a known-motion driving clip, reports for bad videos, resuming, and the animate API."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")
pytest.importorskip("facenet_pytorch")

from mp_lightning.preprocess import landmark_sources as L  # noqa: E402
from mp_lightning.preprocess import pipeline, tracking  # noqa: E402

try:
    L.import_mediapipe()
    HAVE_MEDIAPIPE = True
except Exception:  # noqa: BLE001
    HAVE_MEDIAPIPE = False
try:
    from mp_lightning.landmarks import LandmarkSpec
except ImportError:  # written by another helper; the JSON contract is checked by hand then
    LandmarkSpec = None
needs_mediapipe = pytest.mark.skipif(not HAVE_MEDIAPIPE, reason="mediapipe not installed (" + L.INSTALL_HINT + ")")

SIZE = 256  # raw frame size of the synthetic driving video
CROP = 128  # output crop size
T = 30


def _affines(n: int = T) -> list[np.ndarray]:
    """Known per-frame 2x3 affine motions of the photo: rotation up to 8 degrees about the face plus
    translations up to 14 px (frame 0 is the identity)."""
    out = []
    for t in range(n):
        a = np.deg2rad(8 * np.sin(2 * np.pi * t / n))
        dx, dy = 14 * np.sin(3 * np.pi * t / n), 8 * np.cos(2 * np.pi * t / n) - 8
        c = np.array([SIZE * 0.45, SIZE * 0.25])
        R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        out.append(np.hstack([R, (c - R @ c + [dx, dy])[:, None]]))
    return out


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return skdata.astronaut()  # (512, 512, 3) uint8


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory, astro) -> Path:
    from mp_lightning.io.video import write_video

    raw = tmp_path_factory.mktemp("raw")
    img = cv2.resize(astro, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    frames = np.stack([cv2.warpAffine(img, M, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT) for M in _affines()])
    write_video(raw / "astronaut" / "moving.mp4", frames, fps=25, crf=12)
    write_video(raw / "nobody" / "wall.mp4", np.full((12, 64, 64, 3), 128, np.uint8))
    (raw / "broken").mkdir()
    (raw / "broken" / "garbage.mp4").write_bytes(os.urandom(2000))
    return raw


def _settings(**kw) -> pipeline.Settings:
    base = dict(size=CROP, min_frames=16, test_fraction=0.0)
    base.update(kw)
    return pipeline.Settings(**base)


@pytest.fixture(scope="module")
def processed(raw_dir, tmp_path_factory):
    if not HAVE_MEDIAPIPE:
        pytest.skip("mediapipe not installed")
    out = tmp_path_factory.mktemp("out")
    report = pipeline.preprocess_dataset(raw_dir, out, _settings(), workers=1, progress=False)
    return out, report


# ------------------------------------------------------------------------------------------- detection
def test_mtcnn_finds_the_astronaut_face(astro):
    (boxes, probs), = tracking.FaceDetector(max_side=512).detect([astro])
    assert len(boxes) == 1 and probs[0] > 0.99
    # reference box measured with facenet-pytorch on this photo: (181, 62)-(268, 172)
    np.testing.assert_allclose(boxes[0], [181, 62, 268, 172], atol=8)
    # downscaled detection (the speed path) finds the same face, boxes in full-resolution pixels
    (small, _), = tracking.FaceDetector(max_side=200).detect([astro])
    assert tracking.iou(small[0], boxes[0])[0, 0] > 0.8


@needs_mediapipe
def test_dense_detector_points_inside_face_box(astro):
    (boxes, _), = tracking.FaceDetector(max_side=512).detect([astro])
    x0, y0, x1, y1 = boxes[0]
    w, h = x1 - x0, y1 - y0
    for kind, k in (("mediapipe", 478), ("mediapipe468", 468), ("mediapipe68", 68)):
        src = L.make_source(kind)
        lms = src.detect(astro[None], video=False)
        assert lms.shape == (1, k, 2) and lms.dtype == np.float32
        px = lms[0] * 512
        # the mesh reaches a little above the MTCNN box (forehead): allow 15 % of the box
        assert (px[:, 0] > x0 - 0.15 * w).all() and (px[:, 0] < x1 + 0.15 * w).all()
        assert (px[:, 1] > y0 - 0.15 * h).all() and (px[:, 1] < y1 + 0.15 * h).all()
        spec = src.spec()
        assert spec["num_points"] == k
        assert sorted(spec["flip_permutation"]) == list(range(k))
        perm = np.array(spec["flip_permutation"])
        assert (perm[perm] == np.arange(k)).all()
        assert max(max(e) for e in spec["edges"]) < k and len(spec["gaze_ids"]) == 8
        if LandmarkSpec is not None:  # the stages read landmarks.json through this class
            assert LandmarkSpec.from_json(spec).num_points == k
        src.close()


@needs_mediapipe
def test_flip_permutation_matches_the_mirrored_detection(astro):
    """Landmarks of the mirrored photo, mirrored back and re-indexed by the flip permutation, must land on
    the landmarks of the photo (the horizontal-flip augmentation relies on this table)."""
    src = L.MediaPipeMesh()
    a = src.detect(astro[None], video=False)[0]
    b = src.detect(np.ascontiguousarray(astro[None, :, ::-1]), video=False)[0]
    b[:, 0] = 1 - b[:, 0]
    perm = np.array(src.spec()["flip_permutation"])
    err = np.linalg.norm(b[perm] - a, axis=1) * 512
    # mean 1.5 px on a 90 px face; a wrong pair would be off by the eye-to-eye distance (~40 px)
    assert err.mean() < 3 and np.percentile(err, 99) < 8, (err.mean(), err.max())
    src68 = L.MediaPipe68()
    spec68 = src68.spec()
    np.testing.assert_array_equal(np.array(L.MESH_FLIP)[L.MESH_TO_68], np.array(L.MESH_TO_68)[spec68["flip_permutation"]])


# ------------------------------------------------------------------------------------------- tracking
def test_link_tracks_splits_on_jump_and_loss():
    box = np.array([[100, 100, 150, 160]], np.float32)
    far = box + 200
    p = np.ones(1, np.float32)
    none = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    dets = [(0, box, p), (5, box + 2, p), (10, far, p), (15, far, p), (20, *none), (25, *none), (30, far, p)]
    tracks = tracking.link_tracks(dets, max_gap=10)
    assert [(t.start, t.stop) for t in tracks] == [(0, 6), (10, 16), (30, 31)]
    assert tracks[0].end_reason == "face jumped" and tracks[1].end_reason == "face lost"
    dense = tracks[0].dense()
    assert dense.shape == (6, 4) and np.allclose(dense[1], box[0] + 0.4)  # interpolated between keyframes


def test_crop_box_and_coordinates():
    boxes = np.array([[100, 100, 150, 160]], np.float64)
    x0, y0, side = tracking.crop_box(boxes)
    assert side == pytest.approx(60 * tracking.ENLARGE)
    assert x0 + side / 2 == pytest.approx(125) and y0 + side / 2 == pytest.approx(130 - tracking.SHIFT_UP * 60)
    frame = np.zeros((200, 200, 3), np.uint8)
    frame[130, 125] = 255
    crop = tracking.crop_frame(frame, (x0, y0, side), 108)
    (py, px), = np.argwhere(crop[..., 0] == crop[..., 0].max())[:1]
    uv = tracking.to_crop_coords(np.array([[125.5, 130.5]]), (x0, y0, side))[0] * 108
    assert abs(uv[0] - (px + 0.5)) < 1.5 and abs(uv[1] - (py + 0.5)) < 1.5
    # a box leaving the frame is padded, not shifted
    assert tracking.crop_frame(frame, (-50, -50, 100), 64).shape == (64, 64, 3)


def test_fill_missing_and_smoothing():
    t = np.linspace(0.4, 0.6, 40, dtype=np.float32)  # a slow drift, 0.12 frame widths per second
    clean = np.stack([np.stack([t, 1 - t], -1)] * 3, 1)  # (40, 3, 2)
    raw = clean.copy()
    raw[[0, 10, 11, 39]] = np.nan
    filled, n = L.fill_missing(raw)
    assert n == 4 and np.isfinite(filled).all()
    np.testing.assert_allclose(filled[10:12], clean[10:12], atol=1e-6)
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 0.003, clean.shape).astype(np.float32)  # ~0.8 px at 256 px
    still = np.full_like(clean, 0.5)
    for method in ("savgol", "one_euro"):  # a still face: both filters remove much of the jitter
        sm = L.smooth_landmarks(still + jitter, method)
        assert sm.shape == clean.shape
        assert np.abs(sm - still)[5:].mean() < 0.8 * np.abs(jitter)[5:].mean(), method
    # a moving face: Savitzky-Golay has no lag, so it still brings the points closer to the truth
    sm = L.smooth_landmarks(clean + jitter, "savgol")
    assert np.abs(sm - clean)[2:-2].mean() < 0.8 * np.abs(jitter)[2:-2].mean()
    np.testing.assert_array_equal(L.smooth_landmarks(clean, "none"), clean)
    with pytest.raises(Exception, match="no face"):
        L.fill_missing(np.full((3, 2, 2), np.nan, np.float32))


# ------------------------------------------------------------------------------------------- dataset
@needs_mediapipe
def test_known_motion_clip_is_one_track_whose_landmarks_follow_the_motion(processed):
    out, report = processed
    by_video = {v["video"]: v for v in report["videos"]}
    moving = by_video["astronaut/moving.mp4"]
    assert moving["status"] == "ok" and moving["tracks"] == 1 and len(moving["clips"]) == 1
    clip = moving["clips"][0]
    assert clip["clip"] == "train/astronaut/moving/00000" and clip["frames"] == [0, T]
    from mp_lightning.io.video import read_video

    frames = read_video(out / f"{clip['clip']}.mp4")
    assert frames.shape == (T, CROP, CROP, 3)
    lms = np.load(out / f"{clip['clip']}.landmarks.npy")
    assert lms.shape == (T, 478, 2) and lms.dtype == np.float32
    assert lms.min() > 0 and lms.max() < 1
    # back to raw-frame pixels through the static crop box, then compare with the known motion
    x0, y0, side = clip["crop"]
    px = lms.astype(np.float64) * round(side) + [round(x0), round(y0)]
    A = _affines()
    errs = []
    for t in range(T):
        M = np.vstack([A[t], [0, 0, 1]])  # frame 0 is the identity
        errs.append(np.linalg.norm(px[t] - (px[0] @ M[:2, :2].T + M[:2, 2]), axis=1))
    errs = np.array(errs)
    # measured: mean 0.4 px, 95th percentile 0.9 px on a 56 px face in the 256 px frame
    assert errs.mean() < 1.5 and np.percentile(errs, 95) < 3.0, (errs.mean(), np.percentile(errs, 95))
    spec = json.loads((out / "landmarks.json").read_text())
    assert spec["num_points"] == 478 and len(spec["flip_permutation"]) == 478
    assert "edges" in spec and len(spec["gaze_ids"]) == 8


@needs_mediapipe
def test_videos_without_face_or_broken_are_reported(processed):
    out, report = processed
    on_disk = json.loads((out / pipeline.REPORT_NAME).read_text())
    by_video = {v["video"]: v for v in on_disk["videos"]}
    assert by_video["nobody/wall.mp4"]["status"] == "no face"
    assert "no face" in by_video["nobody/wall.mp4"]["reason"]
    assert by_video["broken/garbage.mp4"]["status"] == "error"
    assert "decode error" in by_video["broken/garbage.mp4"]["reason"]
    assert on_disk["totals"]["clips"] == 1 and on_disk["totals"]["videos"] == 3
    assert not (out / "train" / "nobody").exists() and not (out / "test" / "nobody").exists()
    assert on_disk["identity_embeddings"].startswith(("written", "skipped"))


@needs_mediapipe
def test_interrupted_run_resumes_without_redoing_finished_videos(processed, raw_dir, monkeypatch):
    out, report = processed
    clip = out / f"{report['videos'][0]['clips'][0]['clip']}.mp4"  # astronaut/moving.mp4, sorted first
    mtime = clip.stat().st_mtime_ns
    calls = []
    real = pipeline.process_video
    monkeypatch.setattr(pipeline, "process_video", lambda job: calls.append(job.rel) or real(job))
    again = pipeline.preprocess_dataset(raw_dir, out, _settings(), workers=1, progress=False)
    assert calls == [] and again["totals"]["resumed"] == 3 and again["totals"]["clips"] == 1
    assert clip.stat().st_mtime_ns == mtime
    # an interruption while "nobody/wall.mp4" was running: its marker never got written
    pipeline._marker_path(out, "nobody/wall.mp4").unlink()
    pipeline.preprocess_dataset(raw_dir, out, _settings(), workers=1, progress=False)
    assert calls == ["nobody/wall.mp4"] and clip.stat().st_mtime_ns == mtime


@needs_mediapipe
def test_clip_with_too_many_landmark_misses_is_dropped(raw_dir, tmp_path, monkeypatch):
    class HalfBlind(L.LandmarkSource):
        num_points = 3

        def detect_raw(self, frames, video=True):
            out = np.full((len(frames), 3, 2), 0.5, np.float32)
            out[::2] = np.nan
            return out

    monkeypatch.setitem(pipeline._CACHE, ("lm", "mediapipe"), HalfBlind())
    job = pipeline.VideoJob(str(raw_dir / "astronaut" / "moving.mp4"), "astronaut/moving.mp4", "astronaut", "train",
                            "moving", str(tmp_path), _settings())
    entry = pipeline.process_video(job)
    assert entry["status"] == "no clips" and entry["clips"] == []
    assert "landmarks missing on 15/30 frames" in entry["dropped"][0]["reason"]


def test_identity_map_and_split(tmp_path):
    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    (raw / "a" / "x.mp4").write_bytes(b"")
    (raw / "y.mov").write_bytes(b"")
    jobs, skipped = pipeline.plan_jobs(raw, tmp_path / "out", _settings(), None)
    assert [(j.identity, j.video) for j in jobs] == [("a", "x"), ("y", "y")]
    csv_path = tmp_path / "ids.csv"
    csv_path.write_text("video,identity,split\na/x.mp4,alice,test\n")
    jobs, skipped = pipeline.plan_jobs(raw, tmp_path / "out", _settings(), str(csv_path))
    assert [(j.identity, j.split) for j in jobs] == [("alice", "test")]
    assert skipped[0]["video"] == "y.mov" and skipped[0]["status"] == "skipped"
    assert pipeline.split_of("id00012", 0.5) == pipeline.split_of("id00012", 0.5)
    assert {pipeline.split_of(f"id{i}", 0.3) for i in range(50)} == {"train", "test"}


# ------------------------------------------------------------------------------------------- animate API
@needs_mediapipe
def test_prepare_source_photo(astro, tmp_path):
    from mp_lightning.preprocess import prepare_source_photo

    path = tmp_path / "me.jpg"
    cv2.imwrite(str(path), astro[..., ::-1])
    out = prepare_source_photo(path, size=CROP)
    assert tuple(out["image"].shape) == (3, CROP, CROP) and 0 <= float(out["image"].min()) <= float(out["image"].max()) <= 1
    lms = out["landmarks"]
    assert lms.shape == (478, 2) and out["spec"]["num_points"] == 478
    # framed like the training crops: the face (landmark box) is centred and spans about half the crop
    w = lms[:, 0].max() - lms[:, 0].min()
    assert 0.35 < w < 0.7 and abs(lms[:, 0].mean() - 0.5) < 0.1 and abs(lms[:, 1].mean() - 0.5) < 0.15


@needs_mediapipe
def test_prepare_driving_video(raw_dir):
    from mp_lightning.preprocess import prepare_driving_video

    out = prepare_driving_video(raw_dir / "astronaut" / "moving.mp4", size=CROP, max_frames=20)
    assert tuple(out["frames"].shape) == (20, 3, CROP, CROP)
    assert out["landmarks"].shape == (20, 478, 2) and np.isfinite(out["landmarks"]).all()
    assert list(out["frame_indices"]) == list(range(20))
    with pytest.raises(Exception, match="no face"):
        prepare_driving_video(raw_dir / "nobody" / "wall.mp4", size=CROP)


def test_cli_reports_a_faceless_folder(raw_dir, tmp_path, capsys):
    from mp_lightning.cli import main

    raw = tmp_path / "raw"
    (raw / "nobody").mkdir(parents=True)
    os.link(raw_dir / "nobody" / "wall.mp4", raw / "nobody" / "wall.mp4")
    assert main(["preprocess", str(raw), str(tmp_path / "out"), "--landmarks", "none", "--no-progress"]) == 0
    assert "0 clips" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / pipeline.REPORT_NAME).read_text())
    assert report["videos"][0]["status"] == "no face" and not (tmp_path / "out" / "landmarks.json").exists()


@needs_mediapipe
def test_identity_embedding_written_when_an_embedder_is_available(raw_dir, tmp_path, monkeypatch):
    """With the VGGFace2 weights absent the run skips embeddings (covered above); with an embedder (random
    weights here) each clip gets a unit-norm <clip>.identity.npy."""
    from mp_lightning.networks.identity import EMBEDDING_DIM, FaceEmbedder

    monkeypatch.setitem(pipeline._CACHE, "emb", FaceEmbedder(pretrained=False))
    job = pipeline.VideoJob(str(raw_dir / "astronaut" / "moving.mp4"), "astronaut/moving.mp4", "astronaut", "train",
                            "moving", str(tmp_path), _settings(landmarks="none"))
    entry = pipeline.process_video(job)
    assert entry["clips"][0]["identity_embedding"] == "written"
    emb = np.load(tmp_path / "train" / "astronaut" / "moving" / "00000.identity.npy")
    assert emb.shape == (EMBEDDING_DIM,) and emb.dtype == np.float32 and abs(np.linalg.norm(emb) - 1) < 1e-4
    assert not (tmp_path / "train" / "astronaut" / "moving" / "00000.landmarks.npy").exists()
