"""`data.landmark_subset`: the sparse-landmark ablation reads a declared subset of the dense points."""
from __future__ import annotations

import numpy as np
import pytest

from datamodules import DataConfig, VoxCelebDataModule
from datamodules.clips import subset_landmark_spec
from mp_lightning.errors import DataError
from mp_lightning.landmarks import LandmarkSpec


def _dm(root, **kw):
    return VoxCelebDataModule(DataConfig(root=str(root), image_size=64, batch_size=2, num_workers=0, **kw))


def test_subset_batches_hold_exactly_the_declared_points(tiny_data):
    dense, sparse = _dm(tiny_data, augment_flip=False), _dm(tiny_data, augment_flip=False, landmark_subset="sparse68")
    dense.setup("fit"), sparse.setup("fit")
    ids = dense.landmark_spec_dict["subsets"]["sparse68"]["ids"]
    b_dense, b_sparse = next(iter(dense.val_dataloader()[0])), next(iter(sparse.val_dataloader()[0]))
    assert b_sparse["driving_landmarks"].shape[1] == 68
    np.testing.assert_array_equal(b_sparse["driving_landmarks"].numpy(), b_dense["driving_landmarks"][:, ids].numpy())
    spec = LandmarkSpec.from_json(sparse.landmark_spec_dict)
    assert spec.num_points == 68 and max(max(e) for e in spec.edges) < 68


def test_subset_flip_permutation_mirrors_the_points(tiny_data):
    full = _dm(tiny_data).landmark_spec_dict
    ids, sub = subset_landmark_spec(full, "sparse68")
    lm = np.load(next((tiny_data / "train").rglob("*.landmarks.npy")))[0][ids]
    mirrored = lm[sub["flip_permutation"]].copy()
    mirrored[:, 0] = 1 - mirrored[:, 0]
    # the synthetic faces are near-symmetric, so mirroring and re-indexing lands near the same points
    assert np.abs(mirrored - lm).mean() < 0.05
    assert sorted(sub["flip_permutation"]) == list(range(68))


def test_unknown_subset_is_a_clear_error(tiny_data):
    with pytest.raises(DataError, match="no subset 'sparse5'.*sparse68"):
        _dm(tiny_data, landmark_subset="sparse5")
