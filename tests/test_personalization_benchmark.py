"""`mp-lightning personalization-benchmark`: the protocol (disjoint support / evaluation frames, held-out
identities), the summary schema and the outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mp_lightning.errors import ConfigError
from mp_lightning.networks.st_lpips import st_lpips_unavailable_reason
from mp_lightning.runs.personalization_benchmark import (
    benchmark_config,
    benchmark_tasks,
    check_held_out,
    shard,
    steps_to_reach,
)

WARP = "metaportrait/warp_tiny.yaml"
ONE_SCALE = "model.perceptual.scales=[1.0]"


@pytest.fixture(scope="module")
def two_video_data(tmp_path_factory) -> Path:
    from datamodules import write_synthetic_dataset

    root = tmp_path_factory.mktemp("bench")
    write_synthetic_dataset(root, identities=5, videos_per_identity=2, clips_per_video=1, frames=12, size=64, seed=1,
                            test_fraction=0.4, workers=0, personal_details=True)
    return root




def test_support_and_evaluation_frames_are_disjoint(two_video_data, tiny_data):
    # two videos per identity: evaluation comes from the other video only
    tasks = benchmark_tasks(two_video_data, "test", support_seconds=0.2, max_eval_frames=6)
    assert [t.identity for t in tasks] == sorted(p.name for p in (two_video_data / "test").iterdir())
    for t in tasks:
        assert t.support.frames == list(range(5))  # 0.2 s at 25 fps, from the first frame
        assert "/v000/" in t.support.clip
        assert all("/v001/" in c.clip for c in t.evaluation)
        assert not t.support_set() & t.evaluation_set()
        assert len(t.evaluation_set()) == 6
    # one video (two clips): the unseen remainder of the support clip and the other clip
    tasks = benchmark_tasks(tiny_data, "test", identities=1, support_seconds=0.4, max_eval_frames=100)
    t = tasks[0]
    assert t.support.frames == list(range(10))
    assert not t.support_set() & t.evaluation_set()
    remainder = [c for c in t.evaluation if c.clip == t.support.clip]
    assert remainder and min(remainder[0].frames) == 10
    assert len(t.evaluation_set()) == (16 - 10) + 16


def test_support_longer_than_the_clip_is_refused(tiny_data):
    with pytest.raises(Exception, match="support frames"):
        benchmark_tasks(tiny_data, "test", support_seconds=10.0)


def test_identities_must_be_held_out_from_training(built_stage, tiny_data, tmp_path):
    ckpt = built_stage(WARP, ONE_SCALE, run_root=tmp_path, seed=0).save(tmp_path / "init.ckpt")  # trains on tiny_data/train
    tasks = benchmark_tasks(tiny_data, "test", support_seconds=0.2)
    check_held_out(ckpt, tasks, tiny_data, "test")  # the test identities are held out
    with pytest.raises(ConfigError, match="held-out split"):
        check_held_out(ckpt, benchmark_tasks(tiny_data, "train", support_seconds=0.2), tiny_data, "train")
    # a split under another name that holds training identities
    other = tmp_path / "copy"
    (other / "train").mkdir(parents=True)
    (other / "train" / tasks[0].identity).mkdir()
    from mp_lightning.stages.base import load_stage, save_stage_checkpoint

    stage = load_stage(ckpt)
    stage.hparams["config"]["data"]["root"] = str(other)
    leaky = save_stage_checkpoint(stage, tmp_path / "leaky.ckpt")
    with pytest.raises(ConfigError, match="not held out"):
        check_held_out(leaky, tasks, other, "test")


def test_identities_split_over_ranks():
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])


def test_config_overrides_are_checked():
    cfg = benchmark_config(["recipe.lr=1e-4", "lpips_pretrained=false"])
    assert cfg.recipe.lr == 1e-4 and cfg.lpips_pretrained is False
    with pytest.raises(ConfigError, match="recipe.lr"):
        benchmark_config(["recipe.lrr=1e-4"])


def test_summary_leaves_out_identities_a_metric_could_not_score():
    from mp_lightning.runs.personalization_benchmark import summarize

    nan = float("nan")
    results = [{"method": "m", "metrics": {"l1": [0.2, 0.1], "id_similarity_dlib": [0.9, 0.8]}, "seconds": [0, 1]},
               {"method": "m", "metrics": {"l1": [0.4, 0.3], "id_similarity_dlib": [nan, nan]}, "seconds": [0, 3]},
               {"method": "m", "metrics": {"l1": [0.3, 0.2], "id_similarity_dlib": [0.7, 0.6]}, "seconds": [0, 2]}]
    entry = summarize(results, ["m"], [0, 1], 3)["methods"]["m"]
    assert entry["l1"]["mean"] == pytest.approx([0.3, 0.2])
    assert entry["id_similarity_dlib"]["mean"] == pytest.approx([0.8, 0.7])  # dlib found no face in one source
    assert entry["id_similarity_dlib"]["std"] == pytest.approx([0.1414, 0.1414], abs=1e-4)
    assert entry["seconds"] == [0, 2]


def test_worst_change_from_step_0():
    from mp_lightning.runs.personalization_benchmark import worst_change_from_start

    summary = {"steps": [0, 1, 5], "methods": {"m": {"l1": {"mean": [0.2, 0.25, 0.1]}, "psnr": {"mean": [10, 9, 12]},
                                                     "st_lpips": {"mean": [0.3, 0.2, 0.1]}}}}
    assert worst_change_from_start(summary, "m", "l1", higher_is_better=False) == (1, pytest.approx(0.05))
    assert worst_change_from_start(summary, "m", "psnr", higher_is_better=True) == (1, -1)
    assert worst_change_from_start(summary, "m", "st_lpips", higher_is_better=False) is None


def test_steps_to_reach():
    summary = {"steps": [0, 1, 5, 50], "methods": {
        "standard": {"l1": {"mean": [0.2, 0.19, 0.15, 0.1]}, "psnr": {"mean": [10, 11, 12, 20]}},
        "meta": {"l1": {"mean": [0.2, 0.12, 0.09, 0.05]}, "psnr": {"mean": [10, 12, 21, 30]}}}}
    assert steps_to_reach(summary, "meta", "standard", "l1", higher_is_better=False) == 5
    assert steps_to_reach(summary, "meta", "standard", "psnr", higher_is_better=True) == 5
    assert steps_to_reach(summary, "standard", "standard", "l1", higher_is_better=False) == 50
    assert steps_to_reach(summary, "standard", "meta", "l1", higher_is_better=False) is None


def test_benchmark_command_writes_the_summary(built_stage, two_video_data, tmp_path):
    from mp_lightning.cli import main

    a = built_stage(WARP, ONE_SCALE, data_root=two_video_data, run_root=tmp_path, seed=0).save(tmp_path / "a.ckpt")
    out = tmp_path / "bench"
    code = main(["personalization-benchmark", "--checkpoint", f"random={a}", "--checkpoint", f"same={a}",
                 "--data", str(two_video_data), "--support-seconds", "0.2", "--steps", "0,1,3", "--out", str(out),
                 "max_eval_frames=4", "lpips_pretrained=false", "identity_pretrained=false", "device=cpu",
                 "wandb=disabled", "recipe.batch_size=2", "reference=random"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"steps", "identities", "methods"}
    assert summary["steps"] == [0, 1, 3] and summary["identities"] == 2
    # the training metric suite's keys: random networks never under a published name
    metrics = {"lpips_random", "psnr", "ssim", "l1", "id_similarity_random"}
    for name in ("random", "same"):
        entry = summary["methods"][name]
        assert metrics <= set(entry) and "lpips" not in entry and "id_similarity" not in entry
        if st_lpips_unavailable_reason() is None:  # the metrics extra: a real perceptual distance offline
            assert "st_lpips" in entry
        for metric in set(entry) - {"seconds"}:
            assert len(entry[metric]["mean"]) == len(entry[metric]["std"]) == 3
        assert entry["seconds"][0] == 0.0 and entry["seconds"] == sorted(entry["seconds"])
    # the same start and the same seeded support order: the same curve
    assert summary["methods"]["random"]["l1"]["mean"] == pytest.approx(summary["methods"]["same"]["l1"]["mean"])
    # fine-tuning changed the predictions
    assert summary["methods"]["random"]["l1"]["mean"][0] != summary["methods"]["random"]["l1"]["mean"][-1]
    assert "steps to reach random" in (out / "summary.md").read_text()
    assert "worst change from step 0" in (out / "summary.md").read_text()
    assert (out / "curves.png").stat().st_size > 5000
    per_identity = json.loads((out / "per_identity.json").read_text())
    assert len(per_identity["results"]) == 4
