"""Hyper-parameter sweeps from W&B sweep files, online (W&B server + agent) or fully local.

A sweep file (``experiments/sweeps/*.yaml``) is an ordinary W&B sweep config whose ``command`` calls
``mp-lightning train EXPERIMENT.yaml ... ${args_no_hyphens}``; parameters use dotted config keys
(``model.optim.lr``), which our train command reads as ``key=value`` overrides.

Local sweeps (:func:`run_local_sweep`) need no account: W&B's own ``sweeps`` package proposes the
next trial (grid, random, bayes) from the trials so far, every trial is a separate
``mp-lightning train`` process (a crash kills the trial, not the sweep) logging an offline W&B run,
and ``sweep_state.json`` in the sweep directory records every trial so that an interrupted sweep
resumes: finished and failed trials are kept, a trial that was running is run again (it continues
from its own ``last.ckpt``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from mp_lightning.errors import ConfigError

STATE_FILE = "sweep_state.json"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
TRAIN_SUMMARY = "train_summary.json"  # written by mp_lightning.runs.training.run_training
DEFAULT_MAX_RUNS = 10  # random/bayes sweeps never run out of suggestions


# ----------------------------------------------------------------------------------------------
# sweep files


def load_sweep_config(path: str | Path) -> dict:
    """Read a sweep YAML file; raises ConfigError when it is missing, unparsable or not a W&B sweep."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {path}: {err}") from err
    problems = sweep_config_problems(config)
    if problems:
        raise ConfigError(f"{path} is not a valid W&B sweep config: " + "; ".join(problems))
    return config


def sweep_config_problems(config: Any) -> list[str]:
    """W&B's own JSON-schema checks (``sweeps.schema_violations_from_proposed_config``) plus ours:
    the command must call our train command with an experiment file and ``${args_no_hyphens}``."""
    if not isinstance(config, dict):
        return ["a sweep config must be a mapping of keys"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sweeps 0.2.0 + pydantic v2: a config-key UserWarning
        from sweeps import schema_violations_from_proposed_config

        try:
            problems = list(schema_violations_from_proposed_config(config))
        except ValueError as err:
            problems = [str(err)]
    if "program" not in config:
        problems.append("'program' is required")
    if not isinstance(config.get("metric"), dict) or "name" not in config["metric"]:
        problems.append("'metric: {name: ..., goal: minimize|maximize}' is required (the summary table sorts by it)")
    try:
        experiment_and_fixed_args(config)
    except ConfigError as err:
        problems.append(str(err))
    return problems


def experiment_and_fixed_args(config: dict) -> tuple[str, list[str]]:
    """The experiment file and the fixed ``key=value`` args that ``command`` passes to ``train``."""
    command = [str(c) for c in (config.get("command") or [])]
    if "train" not in command:
        raise ConfigError("'command' must call the train command: [${env}, mp-lightning, train, EXP.yaml, ${args_no_hyphens}]")
    if "${args_no_hyphens}" not in command:
        raise ConfigError("'command' must end with ${args_no_hyphens} (our train command reads key=value overrides)")
    after = command[command.index("train") + 1:]
    if not after or after[0].startswith("${") or "=" in after[0]:
        raise ConfigError("'command' names no experiment file after 'train'")
    fixed = [a for a in after[1:] if not (a.startswith("${") and a.endswith("}"))]
    return after[0], fixed


def sweep_name(config: dict, path: str | Path) -> str:
    return str(config.get("name") or Path(path).stem)


def as_override_value(value: Any) -> str:
    """A parameter value as OmegaConf's dotlist reads it (numpy scalars from `sweeps` cast first)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(as_override_value(v) for v in value) + "]"
    return str(value)


def plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# local sweeps


def _load_state(state_path: Path, config: dict) -> dict:
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("sweep_config") != config:
            print(f"note: {state_path.parent} was started from a different sweep file; continuing with its trials")
        return state
    return {"sweep_config": config, "trials": []}


def _save_state(state_path: Path, state: dict) -> None:
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, state_path)  # atomic: an interrupt never leaves half a state file


def _sweep_runs(state: dict, metric: str | None):
    """Our trials as `sweeps.SweepRun`s, the history the search methods condition on."""
    from sweeps import SweepRun

    runs = []
    for trial in state["trials"]:
        summary = {}
        if metric and trial.get("metric") is not None:
            summary[metric] = trial["metric"]
        runs.append(SweepRun(
            name=trial["name"],
            state="finished" if trial["state"] == "finished" else ("running" if trial["state"] == "running" else "failed"),
            config={k: {"value": v} for k, v in trial["params"].items()},
            summaryMetrics=summary,
            history=[summary] if summary else [],
        ))
    return runs


def _suggest(config: dict, state: dict) -> dict | None:
    from sweeps import next_run

    metric = (config.get("metric") or {}).get("name")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = next_run(config, _sweep_runs(state, metric), validate=True)
    if run is None:  # a grid is exhausted
        return None
    return {k: plain(v["value"]) for k, v in run.config.items()}


def trial_command(
    experiment: str,
    fixed: Sequence[str],
    params: dict,
    extra: Sequence[str],
    sweep: str,
    trial: str,
    trial_dir: Path,
) -> list[str]:
    """`python -m mp_lightning train EXP fixed... params... extra... name=... run_dir=... logger.group=...`."""
    return [
        sys.executable, "-m", "mp_lightning", "train", experiment,
        *fixed,
        *(f"{k}={as_override_value(v)}" for k, v in params.items()),
        *extra,
        f"name={sweep}/{trial}",
        f"run_dir={trial_dir}",
        f"logger.group={sweep}",
    ]


def _trial_metric(trial_dir: Path, metric: str | None) -> tuple[float | None, dict]:
    path = trial_dir / TRAIN_SUMMARY
    if not path.is_file():
        return None, {}
    metrics = json.loads(path.read_text()).get("metrics", {})
    value = metrics.get(metric) if metric else None
    if value is not None and not math.isfinite(float(value)):
        value = None
    return (None if value is None else float(value)), metrics


def run_local_sweep(
    sweep_file: str | Path,
    extra_overrides: Iterable[str] = (),
    max_runs: int | None = None,
    sweep_dir: str | Path | None = None,
    quiet: bool = False,
) -> dict:
    """Run (or resume) a sweep on this machine; returns the state dict (trials, summary paths).

    ``max_runs`` caps the total number of trials of the sweep (those of earlier, interrupted
    invocations included); default: the whole grid, or 10 for random and bayes.
    """
    sweep_file = Path(sweep_file)
    config = load_sweep_config(sweep_file)
    name = sweep_name(config, sweep_file)
    experiment, fixed = experiment_and_fixed_args(config)
    if not Path(experiment).is_file():
        raise ConfigError(f"{sweep_file}: experiment file {experiment} (from 'command') not found; run from the repository root")
    extra = list(extra_overrides)
    sweep_dir = Path(sweep_dir) if sweep_dir else Path("runs") / "sweeps" / name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    state_path = sweep_dir / STATE_FILE
    state = _load_state(state_path, config)
    state.update(name=name, experiment=experiment, extra_overrides=extra)
    metric = (config.get("metric") or {}).get("name")
    if max_runs is None:
        max_runs = None if config["method"] == "grid" else DEFAULT_MAX_RUNS

    def log(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    while True:
        pending = [t for t in state["trials"] if t["state"] == "running"]  # interrupted last time
        if pending:
            trial = pending[0]
            log(f"[{name}] re-running interrupted trial {trial['name']}")
        else:
            if max_runs is not None and len(state["trials"]) >= max_runs:
                break
            params = _suggest(config, state)
            if params is None:
                break
            trial = {"name": f"trial{len(state['trials']):03d}", "params": params, "state": "running"}
            state["trials"].append(trial)
        trial_dir = sweep_dir / trial["name"]
        trial["run_dir"] = str(trial_dir)
        _save_state(state_path, state)
        trial_dir.mkdir(parents=True, exist_ok=True)
        cmd = trial_command(experiment, fixed, trial["params"], extra, name, trial["name"], trial_dir)
        trial["command"] = " ".join(cmd[1:])
        log(f"[{name}] {trial['name']}: " + " ".join(f"{k}={as_override_value(v)}" for k, v in trial["params"].items()))
        start = time.time()
        with open(trial_dir / "trial.log", "w") as out:
            returncode = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
        trial["seconds"] = round(time.time() - start, 1)
        trial["returncode"] = returncode
        trial["metric"], trial["metrics"] = _trial_metric(trial_dir, metric)
        trial["state"] = "finished" if returncode == 0 else "failed"
        if returncode != 0:
            trial["error"] = _last_error_line(trial_dir / "trial.log")
            log(f"[{name}] {trial['name']} failed (exit {returncode}): {trial['error']}; the sweep goes on")
        else:
            log(f"[{name}] {trial['name']} finished: {metric} = {trial['metric']}")
        _save_state(state_path, state)

    state["summary_md"], state["summary_csv"] = write_summary(state, sweep_dir, metric, (config.get("metric") or {}).get("goal", "minimize"))
    _save_state(state_path, state)
    log(Path(state["summary_md"]).read_text())
    return state


def _last_error_line(log_path: Path) -> str:
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.lower().startswith(("error", "mp-lightning:")) or "Error" in line.split(":")[0]:
            return line[:300]
    return lines[-1][:300] if lines else ""


def write_summary(state: dict, sweep_dir: Path, metric: str | None, goal: str = "minimize") -> tuple[str, str]:
    """summary.md and summary.csv: one row per trial, best first, failed trials last."""
    trials = list(state["trials"])
    sign = -1.0 if goal == "maximize" else 1.0
    trials.sort(key=lambda t: (t.get("metric") is None, sign * (t.get("metric") or 0.0)))
    keys: list[str] = []
    for t in trials:
        keys += [k for k in t["params"] if k not in keys]
    header = ["trial", "state", metric or "metric", *keys, "run_dir"]
    rows = []
    for t in trials:
        value = t.get("metric")
        rows.append([t["name"], t["state"], "" if value is None else f"{value:.4f}",
                     *(as_override_value(t["params"][k]) if k in t["params"] else "" for k in keys), t.get("run_dir", "")])
    csv_path = sweep_dir / SUMMARY_CSV
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    md = [f"# sweep {state.get('name', '')} ({goal} {metric})", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md_path = sweep_dir / SUMMARY_MD
    md_path.write_text("\n".join(md) + "\n")
    return str(md_path), str(csv_path)


# ----------------------------------------------------------------------------------------------
# online sweeps


def run_online_sweep(
    sweep_file: str | Path,
    extra_overrides: Iterable[str] = (),
    count: int | None = None,
    sweep_id: str | None = None,
    project: str | None = None,
    entity: str | None = None,
    sweep_dir: str | Path | None = None,
    create_only: bool = False,
) -> str:
    """Create the sweep on the W&B server (or join ``sweep_id``) and run an agent here.

    Each suggestion is trained by a separate ``mp-lightning train`` process that continues the
    agent's W&B run (same run id, online), so the server sees the metrics it optimises.
    Several machines can join with ``--sweep-id`` (e.g. one SLURM job per agent).
    """
    import wandb

    sweep_file = Path(sweep_file)
    config = load_sweep_config(sweep_file)
    name = sweep_name(config, sweep_file)
    experiment, fixed = experiment_and_fixed_args(config)
    extra = list(extra_overrides)
    project = project or config.get("project") or "mp-lightning"
    entity = entity or config.get("entity")
    sweep_dir = Path(sweep_dir) if sweep_dir else Path("runs") / "sweeps" / name
    if sweep_id is None:
        sweep_id = wandb.sweep(sweep=config, project=project, entity=entity)
    print(f"sweep id: {sweep_id}  (more agents: mp-lightning sweep --sweep-id {sweep_id} {sweep_file})")
    if create_only:
        return sweep_id

    def trial() -> None:
        run = wandb.init()
        try:
            params = {k: v for k, v in dict(run.config).items()}
            run_id = run.id
        finally:
            run.finish()
        trial_dir = sweep_dir / run_id
        # the train process logs into the agent's run: training.wandb_run_id reads this file
        (trial_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (trial_dir / "checkpoints" / "wandb_id.txt").write_text(run_id + "\n")
        cmd = trial_command(experiment, fixed, params, [*extra, "logger.type=wandb", "logger.mode=online",
                                                        f"logger.project={project}"]
                            + ([f"logger.entity={entity}"] if entity else []), name, run_id, trial_dir)
        returncode = subprocess.call(cmd)
        if returncode != 0:
            print(f"trial {run_id} failed (exit {returncode}); the agent goes on")

    wandb.agent(sweep_id, function=trial, count=count, project=project, entity=entity)
    return sweep_id
