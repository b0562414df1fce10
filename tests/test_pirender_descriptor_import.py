"""Descriptors produced elsewhere: Deep3DFaceRecon .mat files and PIRender's lmdb dataset layout."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mp_lightning.cli import main
from mp_lightning.errors import DataError
from mp_lightning.preprocess.descriptor_import import deep3d_to_semantics, import_pirender_lmdb


def _coeff(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 257)).astype(np.float32), rng.normal(size=(n, 5)).astype(np.float32)


def test_channel_slices_follow_the_official_order():
    coeff, tp = _coeff(3)
    sem = deep3d_to_semantics(coeff, tp[:, 2:5])
    np.testing.assert_array_equal(sem[:, :64], coeff[:, 80:144])
    np.testing.assert_array_equal(sem[:, 64:67], coeff[:, 224:227])
    np.testing.assert_array_equal(sem[:, 67:70], coeff[:, 254:257])
    np.testing.assert_array_equal(sem[:, 70:73], tp[:, 2:5])


def test_import_deep3dfacerecon_mats_for_our_clips(tmp_path):
    from scipy.io import savemat

    from datamodules import VoxCelebDataModule, write_synthetic_dataset

    root = tmp_path / "data"
    write_synthetic_dataset(root, identities=2, videos_per_identity=1, clips_per_video=1, frames=6, size=32,
                            test_fraction=0.5, workers=0)
    mats = tmp_path / "mats"
    expected = {}
    for i, clip in enumerate(sorted(root.rglob("*.mp4"))):
        rel = clip.relative_to(root).with_suffix("")
        coeff, tp = _coeff(6, i)
        (mats / rel).parent.mkdir(parents=True, exist_ok=True)
        if i == 0:  # one file per clip
            savemat(mats / f"{rel}.mat", {"coeff": coeff, "transform_params": tp})
        else:  # one file per frame, the coefficients split by part
            (mats / rel).mkdir()
            parts = dict(id=coeff[:, :80], exp=coeff[:, 80:144], tex=coeff[:, 144:224], angle=coeff[:, 224:227],
                         gamma=coeff[:, 227:254], trans=coeff[:, 254:257])
            for f in range(6):
                savemat(mats / rel / f"{f:06d}.mat", {**{k: v[f:f + 1] for k, v in parts.items()},
                                                     "transform_params": tp[f:f + 1]})
        expected[clip] = deep3d_to_semantics(coeff, tp[:, 2:5])
    assert main(["import-semantics", "deep3dfacerecon", str(mats), str(root)]) == 0
    for clip, sem in expected.items():
        np.testing.assert_allclose(np.load(clip.with_suffix(".semantics.npy")), sem, atol=1e-6)
    assert json.loads((root / "semantics.json").read_text())["kind"] == "deep3dfacerecon"
    dm = VoxCelebDataModule(dict(root=str(root), image_size=32, batch_size=1, num_workers=0, semantics=True,
                                 augment_flip=False, val_split="test"))
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["semantics_kind"] == ["deep3dfacerecon"]


class FakeLmdb(dict):
    """The key/value content PIRender's prepare_vox_lmdb.py writes (bytes keys and values)."""


def test_import_pirender_lmdb_layout(tmp_path):
    import cv2

    from mp_lightning.io.video import read_video

    source = tmp_path / "vox_lmdb"
    source.mkdir()
    store = FakeLmdb()
    names = {"train": ["id10001#abcDEF#000001#000009"], "test": ["id10002#xyz#000003#000008"]}
    coeffs = {}
    for split, clips in names.items():
        (source / f"{split}_list.txt").write_text("\n".join(clips) + "\n")
        for k, name in enumerate(clips):
            n = 4 + k
            coeff = np.random.default_rng(len(name)).normal(size=(n, 260)).astype(np.float32)
            coeffs[name] = coeff
            store[f"{name}-length".encode()] = str(n).encode()
            store[f"{name}-coeff_3dmm".encode()] = coeff.tobytes()
            for i in range(n):
                img = np.full((32, 32, 3), 40 * i, np.uint8)
                store[f"{name}-{i:07d}".encode()] = cv2.imencode(".jpg", img)[1].tobytes()
    out = tmp_path / "ours"
    summary = import_pirender_lmdb(source, out, reader=store)
    assert summary["clips"] == {"train": 1, "test": 1}
    clip = out / "train" / "id10001" / "abcDEF" / "000001_000009.mp4"
    assert read_video(clip).shape == (4, 32, 32, 3)
    sem = np.load(clip.with_suffix(".semantics.npy"))
    c = coeffs["id10001#abcDEF#000001#000009"]
    np.testing.assert_array_equal(sem, deep3d_to_semantics(c[:, :257], c[:, 257:]))
    del store["id10002#xyz#000003#000008-0000002".encode()]
    with pytest.raises(DataError, match="id10002#xyz#000003#000008-0000002"):
        import_pirender_lmdb(source, tmp_path / "again", reader=store)
