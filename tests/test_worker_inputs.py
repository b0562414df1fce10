"""MetaPortrait's landmark drawings made per sample in the DataLoader workers equal what `prepare()` draws
on the main process, in every sampling mode (issue 12: no host work inside `training_step`)."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import default_collate

from mp_lightning.config.compose import compose
from mp_lightning.errors import DataError
from mp_lightning.landmarks import DERIVED_KEYS
from mp_lightning.runs.training import build_datamodule, build_stage, connect_stage_and_data
from tests.conftest import EXPERIMENTS, tiny_overrides

BATCH_OF_3 = "data.batch_size=3"


def _assert_same(drawn: dict, reference: dict) -> None:
    for key in DERIVED_KEYS:
        assert drawn[key].dtype == reference[key].dtype, key
        assert torch.equal(drawn[key], reference[key]), key


@pytest.mark.parametrize("mode", ["pairs", "cross_identity", "windows"])
def test_worker_drawings_equal_prepare(built_stage, mode):
    built = built_stage("metaportrait/warp_tiny.yaml", BATCH_OF_3, f"data.mode={mode}", "data.augment_flip=true")
    dm, stage = built.datamodule, built.stage
    plain = next(iter(dm.val_dataloader()[0]))
    assert not set(DERIVED_KEYS) & set(plain)
    connect_stage_and_data(stage, dm)
    drawn = next(iter(dm.val_dataloader()[0]))
    _assert_same(drawn, stage.prepare(plain))
    assert stage.prepare(drawn) is drawn  # nothing left for the training step to draw

    # training samples (random, horizontally flipped half of the time): the transform sees the
    # flipped landmarks, exactly as prepare() does on the collated batch
    ds = dm.train_dataset
    ds.sample_transform = None
    items = [ds[i] for i in range(6)]
    transform = stage.sample_transform()
    _assert_same(default_collate([transform(dict(it)) for it in items]), stage.prepare(default_collate(items)))


def test_identity_task_drawings_equal_prepare(built_stage):
    """The meta stage's identity_tasks batches: each task's support/query pairs (`task_pairs`) carry the
    same drawings prepare() would make for them."""
    from datamodules import task_pairs
    from mp_lightning.batch import tasks_as_pairs

    built = built_stage("metaportrait/meta_warp_tiny.yaml", BATCH_OF_3, "data.mode=identity_tasks",
                        "data.support_frames=2", "data.query_frames=3", "data.batch_size=2")
    dm, meta = built.datamodule, built.stage
    plain = next(iter(dm.val_dataloader()[0]))
    connect_stage_and_data(meta, dm)
    drawn = next(iter(dm.val_dataloader()[0]))
    assert drawn["support_driving_line"].shape == (2, 2, 3, 64, 64) and drawn["query_eye_mask"].shape == (2, 3, 1, 64, 64)
    inner = meta.inner
    for split in ("support", "query"):
        for t in range(2):
            pairs = task_pairs(drawn, t, split)
            _assert_same(pairs, inner.prepare(task_pairs(plain, t, split)))
            assert inner.prepare(pairs) is pairs
        _assert_same(tasks_as_pairs(drawn, split), inner.prepare(tasks_as_pairs(plain, split)))


def test_transform_runs_in_workers_and_pickles(built_stage):
    built = built_stage("metaportrait/refine_tiny.yaml", BATCH_OF_3, "data.num_workers=1")
    dm, stage = built.datamodule, built.stage
    transform = stage.sample_transform()
    clone = pickle.loads(pickle.dumps(transform))  # spawn-started workers receive it pickled
    connect_stage_and_data(stage, dm)
    drawn = next(iter(dm.val_dataloader()[0]))  # drawn in a worker process
    dm.set_sample_transform(None)
    plain = next(iter(dm.val_dataloader()[0]))
    _assert_same(drawn, stage.prepare(plain))
    # same memory layout too, so the refinement network's outputs are identical, not only its inputs
    assert all(drawn[k].is_contiguous() and stage.prepare(plain)[k].is_contiguous() for k in DERIVED_KEYS)
    stage.eval()
    with torch.no_grad():
        a, b = stage(drawn), stage(plain)
    for key in ("prediction_raw", "deformed", "occlusion_map"):
        assert torch.equal(a[key], b[key]), key
    item = dm.val_dataset[0]
    _assert_same(default_collate([clone(dict(item))]), default_collate([transform(dict(item))]))


def test_transform_refuses_another_landmark_set(built_stage):
    stage = built_stage("metaportrait/warp_tiny.yaml", BATCH_OF_3).stage
    k = stage.landmark_spec.num_points
    item = {"source": torch.zeros(3, 64, 64), "source_landmarks": torch.rand(k + 1, 2), "driving_landmarks": torch.rand(k + 1, 2)}
    with pytest.raises(DataError, match="source_landmarks.*points per frame"):
        stage.sample_transform()(item)
    # samples without landmarks (data.use_landmarks=false) pass through unchanged
    bare = {"source": torch.zeros(3, 64, 64), "driving": torch.zeros(3, 64, 64)}
    assert stage.sample_transform()(bare) is bare


def test_stages_without_per_sample_work(tiny_data):
    cfg = compose(EXPERIMENTS / "baselines" / "fomm_tiny.yaml", tiny_overrides(tiny_data, tiny_data / "runs"))
    dm = build_datamodule(cfg)
    stage = build_stage(cfg, dm)
    assert stage.sample_transform() is None
    connect_stage_and_data(stage, dm)
    dm.setup("fit")
    assert dm.val_dataset.sample_transform is None
