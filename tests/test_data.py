"""VoxCelebDataModule: batch keys per mode, determinism, flip consistency, bad input, DDP sharding."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from datamodules import MODES, DataConfig, VoxCelebDataModule, task_pairs, write_synthetic_dataset
from datamodules import synthetic
from mp_lightning.errors import DataError

SIZE = 64
FRAMES = 10
K = synthetic.NUM_POINTS


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vox") / "data"
    # 6 identities -> 4 train (8 clips), 2 test (4 clips)
    write_synthetic_dataset(path, identities=6, videos_per_identity=1, clips_per_video=2, frames=FRAMES, size=SIZE, seed=0, workers=0)
    return path


def _config(root, **kw) -> DataConfig:
    base = dict(root=str(root), image_size=SIZE, batch_size=2, num_workers=0, window_length=4, support_frames=2, query_frames=3)
    base.update(kw)
    return DataConfig(**base)


def _module(root, **kw) -> VoxCelebDataModule:
    dm = VoxCelebDataModule(_config(root, **kw))
    dm.setup("fit")
    return dm


EXPECTED = {
    "pairs": {"source": (2, 3, SIZE, SIZE), "driving": (2, 3, SIZE, SIZE), "source_landmarks": (2, K, 2),
              "driving_landmarks": (2, K, 2), "source_index": (2,), "driving_index": (2,)},
    "windows": {"frames": (2, 4, 3, SIZE, SIZE), "frames_landmarks": (2, 4, K, 2), "frame_indices": (2, 4),
                "source": (2, 3, SIZE, SIZE), "driving": (2, 3, SIZE, SIZE), "source_landmarks": (2, K, 2),
                "driving_landmarks": (2, K, 2), "source_index": (2,), "driving_index": (2,)},
    "identity_tasks": {"source": (2, 3, SIZE, SIZE), "source_landmarks": (2, K, 2), "source_index": (2,),
                       "support_driving": (2, 2, 3, SIZE, SIZE), "support_driving_landmarks": (2, 2, K, 2),
                       "support_driving_index": (2, 2), "query_driving": (2, 3, 3, SIZE, SIZE),
                       "query_driving_landmarks": (2, 3, K, 2), "query_driving_index": (2, 3)},
}
EXPECTED["cross_identity"] = dict(EXPECTED["pairs"], driving_initial=(2, 3, SIZE, SIZE), driving_initial_landmarks=(2, K, 2))
LISTS = {"pairs": {"clip", "identity"}, "windows": {"clip", "identity"}, "identity_tasks": {"clip", "identity"},
         "cross_identity": {"clip", "identity", "driving_clip", "driving_identity"}}


@pytest.mark.parametrize("mode", MODES)
def test_batch_keys_and_shapes(root, mode):
    dm = _module(root, mode=mode)
    for loader in (dm.train_dataloader(), dm.val_dataloader()[0]):
        batch = next(iter(loader))
        assert set(batch) == set(EXPECTED[mode]) | LISTS[mode]
        for key, shape in EXPECTED[mode].items():
            assert tuple(batch[key].shape) == shape, key
            if key.endswith("index") or key == "frame_indices":
                assert batch[key].dtype == torch.long
            else:
                assert batch[key].dtype == torch.float32
                assert batch[key].min() >= 0 and batch[key].max() <= 1
        for key in LISTS[mode]:
            assert isinstance(batch[key], list) and len(batch[key]) == 2 and all(isinstance(v, str) for v in batch[key])
        assert batch["clip"][0].split("/")[0] in ("train", "test")
        assert batch["clip"][0].split("/")[1] == batch["identity"][0]
    if mode == "cross_identity":
        assert all(a != b for a, b in zip(batch["identity"], batch["driving_identity"]))
    if mode == "windows":
        idx = batch["frame_indices"]
        assert (idx[:, 1:] - idx[:, :-1] == 1).all()
        assert torch.equal(batch["source"], batch["frames"][:, 0]) and torch.equal(batch["driving"], batch["frames"][:, -1])
    if mode == "pairs":
        assert (batch["source_index"] != batch["driving_index"]).all()


def test_task_pairs(root):
    dm = _module(root, mode="identity_tasks")
    batch = next(iter(dm.train_dataloader()))
    for split, n in (("support", 2), ("query", 3)):
        pairs = task_pairs(batch, 1, split)
        assert pairs["source"].shape == (n, 3, SIZE, SIZE) and pairs["driving"].shape == (n, 3, SIZE, SIZE)
        assert pairs["source_landmarks"].shape == (n, K, 2) and pairs["driving_landmarks"].shape == (n, K, 2)
        assert torch.equal(pairs["source"][-1], batch["source"][1])
        assert torch.equal(pairs["driving"], batch[f"{split}_driving"][1])
        assert pairs["identity"] == [batch["identity"][1]] * n
    # all frames of a task come from one person
    ds = dm.train_dataset
    item = ds[0]
    assert item["identity"] == ds.identity_names[0]


def test_landmarks_match_the_file(root):
    dm = _module(root, mode="pairs", augment_flip=False)
    batch = next(iter(dm.train_dataloader()))
    for b in range(2):
        clip = Path(root) / (batch["clip"][b] + ".landmarks.npy")
        lms = np.load(clip)
        np.testing.assert_array_equal(batch["source_landmarks"][b].numpy(), lms[batch["source_index"][b]])
        np.testing.assert_array_equal(batch["driving_landmarks"][b].numpy(), lms[batch["driving_index"][b]])


def test_eval_samples_are_fixed(root):
    a = _module(root, mode="pairs", val_samples_per_clip=2)
    b = _module(root, mode="pairs", val_samples_per_clip=2, num_workers=2)
    assert len(a.val_dataset) == 8  # 2 held-out train identities x 2 clips x 2
    first = [(x["clip"], x["source_index"], x["driving_index"]) for x in iter(a.val_dataloader()[0])]
    again = [(x["clip"], x["source_index"], x["driving_index"]) for x in iter(a.val_dataloader()[0])]
    other = [(x["clip"], x["source_index"], x["driving_index"]) for x in iter(b.val_dataloader()[0])]
    for x, y, z in zip(first, again, other):
        assert x[0] == y[0] == z[0] and torch.equal(x[1], y[1]) and torch.equal(x[1], z[1]) and torch.equal(x[2], z[2])
    # training samples are not fixed
    t1 = [a.train_dataset[i]["source_index"].item() for i in range(8)]
    t2 = [a.train_dataset[i]["source_index"].item() for i in range(8)]
    assert t1 != t2


def _bilinear(img: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """img (3,H,W), pts (K,2) in [0,1] with pixel centres at (i+0.5)/W -> (K,3)."""
    grid = (pts * 2 - 1).view(1, 1, -1, 2)
    return torch.nn.functional.grid_sample(img[None], grid, align_corners=False)[0, :, 0].T


def test_flip_keeps_landmarks_on_the_face(root):
    dm = _module(root, mode="pairs", augment_flip=True)
    ds = dm.train_dataset
    spec = dm.landmark_spec_dict
    perm = torch.tensor(spec["flip_permutation"])
    seen = set()
    for i in range(40):
        item = ds[i % len(ds)]
        flipped = ds._flip_now
        seen.add(flipped)
        clip = next(c for c in ds.clips if c.name == item["clip"])
        raw = torch.from_numpy(ds.reader.read(clip, [int(item["source_index"])])[0]).permute(2, 0, 1).float() / 255
        raw_lms = torch.from_numpy(np.load(clip.landmarks_path)[int(item["source_index"])])
        img, lms = item["source"], item["source_landmarks"]
        if not flipped:
            assert torch.allclose(img, raw) and torch.equal(lms, raw_lms)
            continue
        assert torch.allclose(img, raw.flip(-1))
        # point i of the flipped face is the mirror partner of point perm[i] of the original face
        np.testing.assert_allclose(lms[:, 0], 1 - raw_lms[perm, 0], atol=1e-6)
        np.testing.assert_allclose(lms[:, 1], raw_lms[perm, 1], atol=1e-6)
        # ... and the flipped image shows the same thing there
        assert torch.allclose(_bilinear(img, lms), _bilinear(raw, raw_lms[perm]), atol=1e-4)
        # the "left eye" points are still on the image-left of the "right eye" points
        g = synthetic.GROUPS
        assert lms[g["left_eye"], 0].mean() < lms[g["right_eye"], 0].mean()
        assert lms[g["left_iris"], 0].mean() < lms[g["right_iris"], 0].mean()
    assert seen == {True, False}
    # validation is never flipped
    dm.val_dataset[0]
    assert dm.val_dataset._flip_now is False


def test_png_frame_folders(tmp_path, root):
    png = tmp_path / "png"
    write_synthetic_dataset(png, identities=6, videos_per_identity=1, clips_per_video=2, frames=FRAMES, size=SIZE,
                            seed=0, workers=0, layout="vox-png")
    dm_png = _module(png, mode="pairs", augment_flip=False)
    dm_mp4 = _module(root, mode="pairs", augment_flip=False)
    assert len(dm_png.val_dataset) == len(dm_mp4.val_dataset) == 4
    for i in range(4):
        a, b = dm_png.val_dataset[i], dm_mp4.val_dataset[i]
        assert a["identity"] == b["identity"]
        assert a["clip"].replace("#", "/") == b["clip"]
        assert a["source_index"] == b["source_index"]
        assert torch.equal(a["source_landmarks"], b["source_landmarks"])
        # lossless PNG vs H.264 of the same rendered frame
        assert (a["source"] - b["source"]).abs().mean() < 0.03


def test_resize_to_image_size(root):
    dm = _module(root, mode="pairs", image_size=32)
    batch = next(iter(dm.train_dataloader()))
    assert batch["source"].shape == (2, 3, 32, 32)


@pytest.fixture()
def broken_root(tmp_path, root) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    clips = sorted(broken.glob("train/*/*/*.mp4"))
    data = clips[0].read_bytes()
    clips[0].write_bytes(data[: len(data) // 2])  # truncated download
    lm = clips[1].with_suffix("").with_suffix(".landmarks.npy")
    np.save(lm, np.load(lm)[:, :10])  # wrong number of points
    clips[2].with_suffix("").with_suffix(".landmarks.npy").unlink()  # missing landmarks
    lm = clips[3].with_suffix("").with_suffix(".landmarks.npy")
    bad = np.load(lm)
    bad[2, 5] = np.nan
    np.save(lm, bad)
    (broken / "train" / "id99999").mkdir()  # empty identity folder
    return broken


def test_bad_clips_are_reported_and_left_out(broken_root, tmp_path):
    report_dir = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="bad clip"):
        dm = VoxCelebDataModule(_config(broken_root, mode="pairs", val_identities=1), report_dir=report_dir)
        dm.setup("fit")
    report = json.loads((report_dir / "data_report.json").read_text())
    train = report["splits"]["train"]
    assert train["clips_found"] == 8 and train["clips_usable"] == 4 and train["clips_bad"] == 4
    reasons = {b["clip"].split("/", 1)[1]: b["reason"] for b in train["bad_clips"]}
    assert any("cannot open container" in r or "truncated" in r for r in reasons.values())
    assert any("points" in r for r in reasons.values())
    assert any("missing landmarks" in r for r in reasons.values())
    assert any("NaN" in r for r in reasons.values())
    assert train["empty_identity_folders"] == ["id99999"]
    used = {c.name for c in dm.train_dataset.clips}
    assert not used & {b["clip"] for b in train["bad_clips"]}
    for batch in dm.train_dataloader():
        assert set(batch["clip"]) <= used


def test_strict_raises(broken_root):
    with pytest.raises(DataError, match="strict"):
        VoxCelebDataModule(_config(broken_root, strict=True)).setup("fit")


def test_short_clips_for_windows(root):
    with pytest.raises(DataError, match="no usable clip.*only 10 frames"):
        VoxCelebDataModule(_config(root, mode="windows", window_length=FRAMES + 1)).setup("fit")


def test_no_usable_clip_names_the_root(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nothing")):
        VoxCelebDataModule(_config(tmp_path / "nothing")).setup("fit")
    empty = tmp_path / "empty"
    (empty / "train" / "id0").mkdir(parents=True)
    with pytest.raises(DataError, match=f"no usable clip in data root {empty}"):
        VoxCelebDataModule(_config(empty)).setup("fit")


def test_decode_failure_at_sample_time_is_skipped(tmp_path, root):
    copy = tmp_path / "late"
    shutil.copytree(root, copy)
    dm = VoxCelebDataModule(_config(copy, mode="pairs"), report_dir=tmp_path / "run")
    dm.setup("fit")
    ds = dm.val_dataset
    victim = ds.clips[0]
    Path(victim.path).write_bytes(b"\0" * 100)  # damaged after the scan
    with pytest.warns(RuntimeWarning, match="skipping clip"):
        item = ds[0]  # sample 0 belongs to the damaged clip
    assert item["clip"] != victim.name
    assert victim.name in ds.failures
    log = (tmp_path / "run" / "data_sample_failures.jsonl").read_text().splitlines()
    assert json.loads(log[0])["clip"] == victim.name
    for batch in dm.val_dataloader()[0]:  # a whole pass survives
        assert victim.name not in batch["clip"]


# ---------------------------------------------------------------------------------------------- DDP
class Recorder(L.LightningModule):
    """Records the training samples each DDP rank sees (clip@source-driving) into out_dir/rank<r>.json."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir
        self.layer = torch.nn.Linear(1, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen += [
            f"{c}@{s}-{d}" for c, s, d in zip(batch["clip"], batch["source_index"].tolist(), batch["driving_index"].tolist())
        ]
        return self.layer(batch["source"].mean((1, 2, 3))[:, None]).sum()

    def on_train_epoch_end(self):
        sampler = type(self.trainer.train_dataloader.sampler).__name__
        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps({"seen": self.seen, "sampler": sampler}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.slow
def test_ddp_ranks_get_disjoint_training_samples(root, tmp_path):
    dm = VoxCelebDataModule(_config(root, mode="pairs", batch_size=2))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Recorder(str(tmp_path)), datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["sampler"] == "DistributedSampler" for r in ranks)
    clips = [{s.split("@")[0] for s in r["seen"]} for r in ranks]
    # 4 train identities, 2 held out for validation: 4 training clips, one sample each, split in two
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 2
    assert not clips[0] & clips[1]
    assert len(clips[0] | clips[1]) == 4


def _identities(clips) -> set[str]:
    return {c.identity for c in clips}


def test_validation_identities_are_carved_from_train_never_test(root, tmp_path):
    dm = VoxCelebDataModule(_config(root, mode="pairs"), report_dir=tmp_path)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = (_identities(d.clips) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset))
    assert len(val) == 2 and len(train) == 2 and len(test) == 2
    assert not val & train and not val & test
    assert val | train == _identities(dm._scan("train").clips)
    assert _identities(dm.val_cross_dataset.clips) == val
    # deterministic: another module (and the report) name the same identities
    again = VoxCelebDataModule(_config(root, mode="pairs"))
    assert again.validation_identities == sorted(val)
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["validation"] == {"split": "train", "identities": sorted(val), "sets": ["self", "cross"]}


def test_validation_sets_self_then_cross_identity(root):
    dm = _module(root, mode="pairs")
    self_loader, cross_loader = dm.val_dataloader()
    assert dm.val_set_names == ("self", "cross")
    cross = next(iter(cross_loader))
    assert all(d != s for d, s in zip(cross["driving_identity"], cross["identity"]))
    assert "driving_identity" not in next(iter(self_loader))
    # super-resolution windows animate nothing: no cross-identity set
    assert _module(root, mode="windows").val_set_names == ("self",)
    assert _module(root, mode="pairs", val_cross_identity=False).val_set_names == ("self",)


def test_validation_split_options(root):
    with pytest.raises(DataError, match="data.val_identities=4"):
        VoxCelebDataModule(_config(root, val_identities=4)).setup("fit")
    # a folder of its own, e.g. the old behaviour on the test split, is still possible when asked for
    dm = VoxCelebDataModule(_config(root, val_split="test"))
    with pytest.warns(RuntimeWarning, match="tune on the test identities"):
        dm.setup("fit")
    assert _identities(dm.train_dataset.clips) == _identities(dm._scan("train").clips)
    assert _identities(dm.val_dataset.clips) == _identities(dm._scan("test").clips)


def _frames_from_source_clip(root, item) -> bool:
    """True when every support/query landmark row is the source clip's row at that frame index."""
    lms = np.load(Path(root) / (item["clip"] + ".landmarks.npy"))
    return all(np.allclose(item[f"{split}_driving_landmarks"][j].numpy(), lms[int(i)], atol=1e-6)
               for split in ("support", "query") for j, i in enumerate(item[f"{split}_driving_index"]))


def test_task_unit_clip_draws_a_task_from_one_clip(root):
    clip_dm = _module(root, mode="identity_tasks", task_unit="clip", augment_flip=False)
    identity_dm = _module(root, mode="identity_tasks", task_unit="identity", augment_flip=False)
    # the official epoch: one task per frame of every clip (2 training identities, the other 2 held out for
    # validation, x 2 clips x 10 frames)
    assert len(clip_dm.train_dataset) == 4 * FRAMES and len(identity_dm.train_dataset) == 2
    assert len(clip_dm.val_dataset) == 4 and len(identity_dm.val_dataset) == 2
    assert all(_frames_from_source_clip(root, clip_dm.train_dataset[i]) for i in range(16))
    # control: identity tasks mix the person's two clips, which the check above detects
    assert not all(_frames_from_source_clip(root, identity_dm.train_dataset[i]) for i in range(16))
    with pytest.raises(DataError, match="task_unit"):
        VoxCelebDataModule(_config(root, mode="identity_tasks", task_unit="video"))
