"""Sweep files are valid W&B sweeps of real config keys; the local sweep engine runs, records and resumes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXPERIMENTS, REPO, tiny_overrides

SWEEP_FILES = sorted((EXPERIMENTS / "sweeps").glob("*.yaml"))

# a trial short enough for CPU tests, that still validates once (so val/l1 exists) and logs offline to W&B
TRIAL = [
    "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0", "trainer.check_val_every_n_epoch=1", "trainer.enable_progress_bar=false",
    "callbacks.media.enabled=false",
]


def test_sweep_files_exist():
    assert len(SWEEP_FILES) >= 3
    methods = {yaml.safe_load(p.read_text())["method"] for p in SWEEP_FILES}
    assert methods == {"grid", "random", "bayes"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.name for p in SWEEP_FILES])
def test_sweep_file_is_valid_wandb_sweep(path, monkeypatch):
    import warnings

    from sweeps import SweepConfig, schema_violations_from_proposed_config

    from mp_lightning.config.compose import compose
    from mp_lightning.runs.sweep import _suggest, experiment_and_fixed_args, load_sweep_config

    raw = yaml.safe_load(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert schema_violations_from_proposed_config(raw) == []
        SweepConfig(raw)  # W&B's own JSON-schema validation raises on an invalid file
    # official sizes: LPIPS; tiny configs: pixel L1 (their LPIPS trunk is random, logged as lpips_random)
    assert raw["metric"] == {"name": "val/l1" if "tiny" in path.name else "val/lpips", "goal": "minimize"}
    assert "${args_no_hyphens}" in raw["command"]
    config = load_sweep_config(path)
    experiment, fixed = experiment_and_fixed_args(config)
    # every swept key is a real config key: the first suggestion composes with the experiment
    monkeypatch.chdir(REPO)
    params = _suggest(config, {"trials": []})
    assert set(params) == set(raw["parameters"])
    compose(experiment, [*fixed, *(f"{k}={v}" for k, v in params.items())])


@pytest.mark.parametrize("change, message", [
    ({"command": ["${env}", "mp-lightning", "train", "x.yaml"]}, "args_no_hyphens"),
    ({"method": "annealing"}, "annealing"),
    ({"metric": None}, "metric"),
    ({"command": ["${env}", "mp-lightning", "eval", "${args_no_hyphens}"]}, "train"),
])
def test_invalid_sweep_files_are_rejected(tmp_path, change, message):
    from mp_lightning.errors import ConfigError
    from mp_lightning.runs.sweep import load_sweep_config

    raw = yaml.safe_load(SWEEP_FILES[0].read_text())
    raw.update(change)
    raw = {k: v for k, v in raw.items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_sweep_config(path)


def test_override_values_are_dotlist_strings():
    import numpy as np

    from mp_lightning.runs.sweep import as_override_value

    assert as_override_value(np.float64(0.5)) == "0.5"
    assert as_override_value(True) == "true"
    assert as_override_value([1, 2]) == "[1,2]"
    assert as_override_value(None) == "null"


@pytest.fixture(scope="module")
def local_sweep(tiny_data, tmp_path_factory):
    """A 3-trial local grid whose middle trial raises (an invalid learning rate)."""
    from mp_lightning.runs.sweep import run_local_sweep

    root = tmp_path_factory.mktemp("sweep")
    sweep_file = root / "tiny_grid.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "tiny_grid", "program": "mp-lightning", "method": "grid",
        "metric": {"name": "val/l1", "goal": "minimize"},
        "parameters": {"model.optim.lr": {"values": [0.001, "not_a_number", 0.002]}},
        "command": ["${env}", "mp-lightning", "train", str(EXPERIMENTS / "metaportrait" / "warp_tiny.yaml"),
                    "${args_no_hyphens}"],
    }))
    extra = [o for o in tiny_overrides(tiny_data, root) if not o.startswith("logger.type")] + TRIAL
    sweep_dir = root / "runs"
    state = run_local_sweep(sweep_file, extra, sweep_dir=sweep_dir, quiet=True)
    return {"file": sweep_file, "extra": extra, "dir": sweep_dir, "state": state}


@pytest.mark.slow
def test_local_grid_sweep_runs_trials_as_offline_wandb_runs(local_sweep):
    state, sweep_dir = local_sweep["state"], local_sweep["dir"]
    finished = [t for t in state["trials"] if t["state"] == "finished"]
    assert [t["params"]["model.optim.lr"] for t in finished] == [0.001, 0.002]
    for trial in finished:
        run_dir = Path(trial["run_dir"])
        assert run_dir.parent == sweep_dir
        assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one offline W&B run per trial
        assert trial["metric"] is not None and trial["metric"] == pytest.approx(trial["metrics"]["val/l1"])
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["logger"]["group"] == "tiny_grid" and config["name"] == f"tiny_grid/{trial['name']}"
        assert config["model"]["optim"]["lr"] == trial["params"]["model.optim.lr"]
    summary = Path(state["summary_md"]).read_text()
    assert summary.count("| trial00") == 3 and "val/l1" in summary
    rows = list(csv.reader(open(state["summary_csv"])))
    assert rows[0][:3] == ["trial", "state", "val/l1"] and len(rows) == 4
    assert rows[-1][1] == "failed"  # failed trials sort last
    saved = json.loads((sweep_dir / "sweep_state.json").read_text())
    assert [t["state"] for t in saved["trials"]] == ["finished", "failed", "finished"]


@pytest.mark.slow
def test_sweep_trials_validate_on_training_identities_never_test_ones(local_sweep, tiny_data):
    train = {p.name for p in (tiny_data / "train").iterdir() if p.is_dir()}
    test = {p.name for p in (tiny_data / "test").iterdir() if p.is_dir()}
    for trial in (t for t in local_sweep["state"]["trials"] if t["state"] == "finished"):
        report = json.loads((Path(trial["run_dir"]) / "data_report.json").read_text())
        validated = set(report["validation"]["identities"])
        assert validated and validated <= train and not validated & test
        assert report["validation"]["sets"] == ["self", "cross"]
        assert any(key.startswith("val/cross/") for key in trial["metrics"])


@pytest.mark.slow
def test_trial_that_raises_is_recorded_and_the_sweep_goes_on(local_sweep):
    failed = local_sweep["state"]["trials"][1]
    assert failed["state"] == "failed" and failed["returncode"] != 0
    assert "model.optim.lr" in failed["error"]
    assert local_sweep["state"]["trials"][2]["state"] == "finished"  # the trial after it still ran


@pytest.mark.slow
def test_interrupted_sweep_resumes_where_it_stopped(local_sweep):
    from mp_lightning.runs.sweep import run_local_sweep

    sweep_dir = local_sweep["dir"]
    state_path = sweep_dir / "sweep_state.json"
    state = json.loads(state_path.read_text())
    state["trials"][1]["state"] = "running"  # as if the sweep was killed during trial001
    state_path.write_text(json.dumps(state))
    log0 = (sweep_dir / "trial000" / "trial.log").stat().st_mtime_ns
    log1 = (sweep_dir / "trial001" / "trial.log").stat().st_mtime_ns
    resumed = run_local_sweep(local_sweep["file"], local_sweep["extra"], sweep_dir=sweep_dir, quiet=True)
    assert [t["name"] for t in resumed["trials"]] == ["trial000", "trial001", "trial002"]  # no new trial
    assert [t["state"] for t in resumed["trials"]] == ["finished", "failed", "finished"]
    assert (sweep_dir / "trial000" / "trial.log").stat().st_mtime_ns == log0  # finished trials kept
    assert (sweep_dir / "trial001" / "trial.log").stat().st_mtime_ns != log1  # the running one re-ran


def test_sweep_command_is_registered():
    from mp_lightning.cli import build_parser

    args = build_parser().parse_args(["sweep", "--local", "--max-runs", "2", "s.yaml", "data.root=x"])
    assert args.local and args.max_runs == 2 and args.overrides == ["data.root=x"]


def test_online_sweep_agent_trains_each_suggestion_in_the_agents_run(tmp_path, monkeypatch):
    """No W&B server here: wandb.sweep/agent/init are stand-ins; the train command they lead to is checked."""
    import wandb

    import mp_lightning.runs.sweep as sweep_mod

    calls = {}

    class FakeRun:
        id = "run123"
        config = {"model.optim.lr": 0.001, "model.optim.warp_lr_multiplier": 0.1}

        def finish(self):
            calls["finished"] = True

    def fake_agent(sweep_id, function, count, project, entity):
        calls["agent"] = (sweep_id, count, project)
        function()

    monkeypatch.setattr(wandb, "sweep", lambda sweep, project, entity: calls.setdefault("sweep", sweep) and "sw1")
    monkeypatch.setattr(wandb, "agent", fake_agent)
    monkeypatch.setattr(wandb, "init", lambda: FakeRun())
    monkeypatch.setattr(sweep_mod.subprocess, "call", lambda cmd: calls.setdefault("cmd", cmd) and 0)
    monkeypatch.chdir(REPO)
    sweep_id = sweep_mod.run_online_sweep(EXPERIMENTS / "sweeps" / "warp_tiny_lr.yaml", ["data.root=x"], count=1,
                                          sweep_dir=tmp_path)
    assert sweep_id == "sw1" and calls["agent"] == ("sw1", 1, "mp-lightning") and calls["finished"]
    cmd = calls["cmd"]
    assert cmd[3:5] == ["train", "experiments/metaportrait/warp_tiny.yaml"]
    for arg in ("model.optim.lr=0.001", "data.root=x", "logger.mode=online", "name=warp_tiny_lr/run123",
                f"run_dir={tmp_path / 'run123'}", "trainer.max_steps=100"):
        assert arg in cmd
    # the train process continues the agent's W&B run
    assert (tmp_path / "run123" / "checkpoints" / "wandb_id.txt").read_text().strip() == "run123"
