"""Ablation sets: every row file exists and composes; the tiny set trains, evaluates and tabulates every row."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXPERIMENTS, tiny_overrides

PAPER = EXPERIMENTS / "paper"
SETS = sorted(PAPER.glob("ablation_base*.yaml"))
SR_SETS = sorted(PAPER.glob("ablation_sr*.yaml"))

# two training steps, one validation and one test batch per set: enough to fill every table cell
SHORT = [
    "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
    "trainer.check_val_every_n_epoch=1", "callbacks.media.enabled=false",
]


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_ablation_sets_name_existing_composable_rows(path):
    from mp_lightning.runs.ablation import is_ablation_set, load_ablation_set
    from mp_lightning.config.compose import compose

    assert is_ablation_set(path)
    ablation = load_ablation_set(path)
    names = [r["name"] for r in ablation["rows"]]
    assert {"warp_dense", "warp_sparse68", "refine_id_loss", "refine_no_id_loss"} <= set(names)
    for row in ablation["rows"]:
        if row.get("optional") and not Path(row["experiment"]).is_file():
            continue
        cfg = compose(row["experiment"], row["overrides"])
        assert cfg.stage
    rows = {r["name"]: compose(r["experiment"]) for r in ablation["rows"] if r["name"] != "personalization"
            and Path(r["experiment"]).is_file()}
    # each pair differs in what the paper ablates
    assert rows["warp_dense"].stage == "warp" and rows["refine_id_loss"].stage == "refine"
    assert rows["refine_id_loss"].model.losses.identity == 20.0
    assert rows["refine_no_id_loss"].model.losses.identity == 0.0
    sparse, dense = rows["warp_sparse68"].data, rows["warp_dense"].data
    # sparse landmarks: a 68-point subset of the same data, or data preprocessed with the 68-point set
    assert (sparse.root, sparse.landmark_subset) != (dense.root, dense.landmark_subset)


def test_row_files_state_only_their_change():
    for path in PAPER.glob("ablation_*.yaml"):
        raw = yaml.safe_load(path.read_text())
        if raw.get("kind") == "ablation_set":
            continue
        assert raw.get("defaults"), f"{path.name} must extend its base through defaults:"
        assert set(raw) <= {"defaults", "name", "model", "data", "stage"}, path.name


@pytest.mark.parametrize("rows, message", [
    ([], "non-empty"),
    ([{"name": "a"}], "experiment"),
    ([{"name": "a", "experiment": "x.yaml", "init_from": "b"}], "earlier row"),
    ([{"name": "a", "experiment": "x.yaml"}, {"name": "a", "experiment": "y.yaml"}], "twice"),
])
def test_bad_ablation_sets_are_rejected(tmp_path, rows, message):
    from mp_lightning.runs.ablation import load_ablation_set
    from mp_lightning.errors import ConfigError

    path = tmp_path / "set.yaml"
    path.write_text(yaml.safe_dump({"kind": "ablation_set", "rows": rows}))
    with pytest.raises(ConfigError, match=message):
        load_ablation_set(path)


@pytest.mark.slow
def test_tiny_ablation_set_writes_a_table_with_every_row(tiny_data, tmp_path):
    from mp_lightning.runs.ablation import load_ablation_set, run_ablation

    ablation = load_ablation_set(PAPER / "ablation_base_tiny.yaml")
    out = tmp_path / "ablation"
    result = run_ablation(PAPER / "ablation_base_tiny.yaml", tiny_overrides(tiny_data, tmp_path, *SHORT),
                          out_dir=out, quiet=True)
    assert [r["state"] for r in result["rows"]] == ["finished"] * len(ablation["rows"])
    # the refinement rows start from the dense warp row's checkpoint
    refine_cfg = yaml.safe_load((out / "refine_id_loss" / "config.yaml").read_text())
    assert refine_cfg["model"]["init_from"] == str(out / "warp_dense" / "checkpoints" / "last.ckpt")

    rows = list(csv.reader(open(result["table_csv"])))
    assert rows[0] == ["variant", *ablation["columns"], "state"]
    assert [r[0] for r in rows[1:]] == [r["label"] for r in ablation["rows"]]  # rows = variants, in order
    identity = [i for i, name in enumerate(rows[0]) if "id_similarity" in name]
    no_face = rows[0].index("test/dlib_no_face")
    for row in rows[1:]:
        # every metric of every row; an identity similarity is blank only where dlib found no face at all
        assert all(cell != "" for i, cell in enumerate(row) if i not in identity), row
        assert all(row[i] != "" for i in identity) or float(row[no_face]) > 0, row
        float(row[1])
    md = Path(result["table_md"]).read_text()
    assert all(r["label"] in md for r in ablation["rows"]) and "test/psnr" in md
    assert list((Path(result["wandb_dir"]) / "wandb").glob("offline-run-*/run-*.wandb"))

    # a second call reuses every finished row instead of training again
    again = run_ablation(PAPER / "ablation_base_tiny.yaml", tiny_overrides(tiny_data, tmp_path, *SHORT),
                         out_dir=out, quiet=True, log_wandb_table=False)
    assert [r["state"] for r in again["rows"]] == ["reused"] * len(ablation["rows"])
    assert json.loads((out / "ablation_results.json").read_text())["name"] == "ablation_base_tiny"


@pytest.mark.parametrize("path", SR_SETS, ids=[p.name for p in SR_SETS])
def test_sr_ablation_sets_pair_temporal_and_per_frame(path):
    from mp_lightning.runs.ablation import load_ablation_set
    from mp_lightning.config.compose import compose

    ablation = load_ablation_set(path)
    assert ablation["evaluate"] == "validation"  # the SR stage reads windows, not test pairs
    temporal, per_frame = (compose(r["experiment"]) for r in ablation["rows"])
    assert temporal.stage == per_frame.stage == "sr"
    assert temporal.model.net.temporal and not per_frame.model.net.temporal


@pytest.mark.slow
def test_tiny_sr_ablation_reports_validation_metrics(tiny_data, tmp_path):
    from mp_lightning.runs.ablation import run_ablation

    result = run_ablation(PAPER / "ablation_sr_tiny.yaml", tiny_overrides(tiny_data, tmp_path, *SHORT),
                          out_dir=tmp_path / "sr", quiet=True, log_wandb_table=False)
    assert [r["state"] for r in result["rows"]] == ["finished", "finished"]
    assert "val/psnr" in result["columns"]
    rows = list(csv.reader(open(result["table_csv"])))
    assert len(rows) == 3 and all(cell != "" for row in rows[1:] for cell in row)


def test_personalization_sets_compose_and_share_the_start():
    from mp_lightning.runs.ablation import load_ablation_set
    from mp_lightning.config.compose import compose

    tiny = load_ablation_set(PAPER / "personalization_tiny.yaml")
    rows = {r["name"]: r for r in tiny["rows"]}
    assert rows["standard"]["init_from"] == rows["meta"]["init_from"] == "start"
    cfgs = {name: compose(r["experiment"], r["overrides"]) for name, r in rows.items()}
    # the same budget of pair passes: standard steps x pairs == meta outer steps x tasks x inner steps x support
    standard, meta = cfgs["standard"], cfgs["meta"]
    assert (standard.trainer.max_steps * standard.data.batch_size
            == meta.trainer.max_steps * meta.data.batch_size * meta.model.inner_steps * meta.data.support_frames)
    # the same network: the meta row's inner stage is the standard row's stage
    assert meta.model.inner_stage == standard.stage
    assert tiny["personalization_benchmark"]["identities"] >= 6
    assert tiny["synth"]["personal_details"] is True
    full = load_ablation_set(PAPER / "personalization.yaml")
    meta_full = compose(next(r for r in full["rows"] if r["name"] == "meta")["experiment"])
    assert meta_full.model.inner_steps == 2 and meta_full.model.outer_lr == 2e-5
    assert meta_full.data.task_unit == "clip"


@pytest.mark.slow
def test_personalization_set_trains_rows_and_runs_the_benchmark(tmp_path):
    from mp_lightning.runs.ablation import run_ablation

    set_file = tmp_path / "set.yaml"
    set_file.write_text(yaml.safe_dump({
        "kind": "ablation_set", "name": "pers", "evaluate": "none",
        "synth": {"identities": 8, "videos_per_identity": 2, "clips_per_video": 1, "frames": 10, "size": 64,
                  "test_fraction": 0.5, "personal_details": True, "workers": 0},
        "rows": [
            {"name": "start", "experiment": str(PAPER / "personalization_tiny_start.yaml"),
             "overrides": ["trainer.max_steps=1"]},
            {"name": "standard", "experiment": str(PAPER / "personalization_tiny_standard.yaml"),
             "overrides": ["trainer.max_steps=2"], "init_from": "start"},
            {"name": "meta", "experiment": str(PAPER / "personalization_tiny_meta.yaml"),
             "overrides": ["trainer.max_steps=1", "data.batch_size=1"], "init_from": "start"},
        ],
        "personalization_benchmark": {"checkpoints": {"standard": "standard", "meta": "meta"}, "identities": 2,
                                      "support_seconds": 0.2, "steps": [0, 2],
                                      "overrides": ["reference=standard", "max_eval_frames=2", "wandb=disabled",
                                                    "lpips_pretrained=false", "identity_pretrained=false",
                                                    "recipe.batch_size=1"]},
    }))
    result = run_ablation(set_file, ["trainer.enable_progress_bar=false", f"output_root={tmp_path / 'out'}"],
                          log_wandb_table=False, quiet=True)
    out = tmp_path / "out" / "ablations" / "pers"
    assert all(r["state"] == "finished" for r in result["rows"]), result["rows"]
    assert (out / "data" / "test").is_dir()
    bench = result["personalization_benchmark"]
    assert bench["state"] == "finished", bench
    summary = json.loads((out / "personalization_benchmark" / "summary.json").read_text())
    assert set(summary["methods"]) == {"standard", "meta"} and summary["identities"] == 2
    assert (out / "personalization_benchmark" / "curves.png").is_file()
