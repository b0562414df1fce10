"""Synthetic VoxCeleb-style data: layout, determinism, landmark set, decord == PyAV."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datamodules import synthetic
from datamodules.synthetic import landmark_spec, write_synthetic_dataset

TINY = dict(identities=4, videos_per_identity=1, clips_per_video=2, frames=8, size=64, workers=0)


def _decode_pyav(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "a"
    write_synthetic_dataset(root, seed=3, **TINY)
    return root


def test_layout_and_disjoint_splits(tiny_root):
    train = sorted(p.name for p in (tiny_root / "train").iterdir())
    test = sorted(p.name for p in (tiny_root / "test").iterdir())
    assert train and test and not set(train) & set(test)
    assert len(train) + len(test) == TINY["identities"]
    clips = sorted(tiny_root.glob("*/*/*/*.mp4"))
    assert len(clips) == TINY["identities"] * TINY["clips_per_video"]
    for clip in clips:
        lms = np.load(clip.with_suffix("").with_suffix(".landmarks.npy"))
        assert lms.dtype == np.float32 and lms.shape == (TINY["frames"], synthetic.NUM_POINTS, 2)
        assert np.isfinite(lms).all() and lms.min() >= 0 and lms.max() <= 1
        assert _decode_pyav(clip).shape == (TINY["frames"], 64, 64, 3)
    rel = clips[0].relative_to(tiny_root).parts
    assert rel[0] in ("train", "test") and rel[1].startswith("id") and rel[2].startswith("v") and rel[3].endswith(".mp4")


def test_landmarks_json(tiny_root):
    spec = json.loads((tiny_root / "landmarks.json").read_text())
    k = spec["num_points"]
    assert k >= 150
    perm = np.array(spec["flip_permutation"])
    assert sorted(perm.tolist()) == list(range(k))
    assert (perm[perm] == np.arange(k)).all()  # mirroring twice is the identity
    edges = np.array(spec["edges"])
    assert edges.ndim == 2 and edges.shape[1] == 2 and edges.min() >= 0 and edges.max() < k
    assert len(spec["gaze_ids"]) == 8 and len(spec["mouth_x_ids"]) == 2 and len(spec["mouth_y_ids"]) == 2
    assert spec == json.loads(json.dumps(landmark_spec()))


def test_flip_permutation_mirrors_a_frontal_face():
    """With no head rotation the face is left-right symmetric: the flip maps the landmarks onto themselves."""
    ident = synthetic.make_identity(np.random.default_rng(0))
    motion = synthetic.make_motion(np.random.default_rng(1), 1)
    for name in ("yaw", "pitch", "roll", "tx", "ty"):
        getattr(motion, name)[:] = 0
    motion.gaze[:] = 0
    motion.eye_open[:] = 1
    _, lms = synthetic.render_frame(ident, motion, 0, 96, np.zeros((96, 96, 3), np.uint8))
    perm = np.array(landmark_spec()["flip_permutation"])
    flipped = lms[perm].copy()
    flipped[:, 0] = 1 - flipped[:, 0]
    np.testing.assert_allclose(flipped, lms, atol=1e-5)
    groups = synthetic.GROUPS
    assert lms[groups["left_eye"], 0].mean() < 0.5 < lms[groups["right_eye"], 0].mean()


def test_landmarks_follow_the_rendered_face():
    """The pupil (drawn at the iris centre landmark) is the darkest spot around that landmark."""
    ident = synthetic.make_identity(np.random.default_rng(5))
    motion = synthetic.make_motion(np.random.default_rng(6), 12)
    motion.eye_open[:] = 1
    size = 192
    bg = np.full((size, size, 3), 255, np.uint8)
    for f in range(0, 12, 3):
        img, lms = synthetic.render_frame(ident, motion, f, size, bg)
        gray = img.astype(np.float32).mean(-1)
        for side in ("left", "right"):
            x, y = lms[synthetic.GROUPS[f"{side}_iris"][8]] * size - 0.5
            xi, yi = int(round(x)), int(round(y))
            assert gray[yi, xi] < 60, (f, side, gray[yi, xi])
        # the middle of the face contour is skin
        x, y = lms[synthetic.GROUPS["contour"]].mean(0) * size - 0.5
        assert np.abs(img[int(y), int(x)].astype(float) - np.array(ident.skin)).max() < 40


def test_deterministic_for_a_seed(tmp_path, tiny_root):
    write_synthetic_dataset(tmp_path / "b", seed=3, **TINY)
    write_synthetic_dataset(tmp_path / "c", seed=4, **TINY)
    for npy in sorted(tiny_root.rglob("*.landmarks.npy")):
        rel = npy.relative_to(tiny_root)
        assert npy.read_bytes() == (tmp_path / "b" / rel).read_bytes()
        clip = Path(str(npy).replace(".landmarks.npy", ".mp4"))
        np.testing.assert_array_equal(_decode_pyav(clip), _decode_pyav(tmp_path / "b" / clip.relative_to(tiny_root)))
    first = sorted(tiny_root.rglob("*.landmarks.npy"))[0].relative_to(tiny_root)
    assert not np.array_equal(np.load(tiny_root / first), np.load(tmp_path / "c" / first))


def test_decord_frames_equal_pyav_frames(tiny_root):
    from datamodules.clips import import_decord

    decord = import_decord()

    clip = sorted(tiny_root.glob("train/*/*/*.mp4"))[0]
    reference = _decode_pyav(clip)
    reader = decord.VideoReader(str(clip), ctx=decord.cpu(0))
    assert len(reader) == len(reference)
    np.testing.assert_array_equal(reader.get_batch(list(range(len(reference)))).asnumpy(), reference)
    shuffled = [6, 1, 7, 3]
    np.testing.assert_array_equal(reader.get_batch(shuffled).asnumpy(), reference[shuffled])
    # a fresh reader seeking straight into the middle of a GOP
    np.testing.assert_array_equal(decord.VideoReader(str(clip))[5].asnumpy(), reference[5])


def test_png_layout(tmp_path):
    root = tmp_path / "png"
    write_synthetic_dataset(root, seed=3, layout="vox-png", **TINY)
    folders = sorted(p for p in (root / "train").iterdir() if p.is_dir())
    assert folders and all(p.name.count("#") == 2 for p in folders)
    frames = sorted(folders[0].iterdir())
    assert [f.name for f in frames] == [f"{i:07d}.png" for i in range(TINY["frames"])]
    lms = np.load(root / "train" / f"{folders[0].name}.landmarks.npy")
    assert lms.shape == (TINY["frames"], synthetic.NUM_POINTS, 2)
    assert not list(root.rglob("*.mp4"))


def test_synth_command(tmp_path, capsys):
    from mp_lightning.cli import main

    out = tmp_path / "cli"
    code = main(
        ["synth", str(out), "--identities", "3", "--videos-per-identity", "1", "--clips-per-video", "1",
         "--frames", "4", "--size", "32", "--seed", "1", "--workers", "0"]
    )
    assert code == 0
    assert len(list(out.rglob("*.mp4"))) == 3 and (out / "landmarks.json").is_file()
    assert "wrote 3 clips" in capsys.readouterr().out
    assert main(["synth", str(tmp_path / "bad"), "--size", "33", "--workers", "0"]) == 2  # odd size: one-line error


@pytest.mark.slow
def test_parallel_matches_serial(tmp_path):
    args = dict(TINY, frames=4, size=32)
    args.pop("workers")
    write_synthetic_dataset(tmp_path / "serial", workers=0, **args)
    write_synthetic_dataset(tmp_path / "parallel", workers=2, **args)
    for npy in sorted((tmp_path / "serial").rglob("*.npy")):
        assert npy.read_bytes() == (tmp_path / "parallel" / npy.relative_to(tmp_path / "serial")).read_bytes()


def test_personal_details_hidden_in_the_first_frame_and_seen_later():
    # the source frame a personalization benchmark animates (frame 0) must not show what fine-tuning can learn
    ident = synthetic.make_identity(synthetic._identity_rng(0, 2))
    details = synthetic.make_personal_details(synthetic._details_rng(0, 2))
    background = synthetic.render_background(ident.background, 64)
    motion = synthetic.neutral_start(synthetic.make_motion(np.random.default_rng(5), 32))
    first, first_lm = synthetic.render_frame(ident, motion, 0, 64, background, details)
    plain, plain_lm = synthetic.render_frame(ident, motion, 0, 64, background)
    assert motion.mouth[0] == 0 and motion.yaw[0] == 0
    np.testing.assert_array_equal(first_lm, plain_lm)
    assert np.abs(first.astype(int) - plain.astype(int)).max() <= 2  # anti-aliased edges of an empty mouth only
    # later frames open the mouth: the teeth (and, when the head turns, the mark / earring) cover pixels
    changed = [np.abs(synthetic.render_frame(ident, motion, f, 64, background, details)[0].astype(int)
                      - synthetic.render_frame(ident, motion, f, 64, background)[0].astype(int)).max(-1) > 30
               for f in range(8, 32)]
    assert max(c.sum() for c in changed) >= 10


def test_personal_details_switch_is_deterministic_and_leaves_the_default_data_alone(tmp_path, tiny_root):
    a = write_synthetic_dataset(tmp_path / "a", seed=3, personal_details=True, **TINY)
    b = write_synthetic_dataset(tmp_path / "b", seed=3, personal_details=True, **TINY)
    assert a["clips"] == b["clips"] and a["personal_details"]
    for rel in a["clips"]:
        frames_a = _decode_pyav(tmp_path / "a" / f"{rel}.mp4")
        np.testing.assert_array_equal(frames_a, _decode_pyav(tmp_path / "b" / f"{rel}.mp4"))
        # same people, same motion: the landmarks of the default data, eased in from a neutral start
        lms = np.load(tmp_path / "a" / f"{rel}.landmarks.npy")
        plain = np.load(tiny_root / f"{rel}.landmarks.npy")
        assert lms.shape == plain.shape
        np.testing.assert_allclose(lms[synthetic.NEUTRAL_START_FRAMES + 1:][:, synthetic.GROUPS["contour"]],
                                   plain[synthetic.NEUTRAL_START_FRAMES + 1:][:, synthetic.GROUPS["contour"]], atol=1e-6)
