"""Paper ablations: train and evaluate every row of an ablation set, then write the ablation table.

An ablation set (``experiments/paper/ablation_*.yaml``) lists rows; each row names an experiment
file that states only what it changes from its base (``experiments/paper/<row>.yaml``)::

    kind: ablation_set
    name: ablation_base_tiny
    overrides: [trainer.max_steps=200]      # added to every row (optional)
    columns: [test/lpips, test/cross/id_similarity]   # table columns (optional; default: every metric)
    evaluate: test        # test: evaluate last.ckpt on the test split | validation: the run's last val/ metrics
    rows:
      - name: warp_dense                    # run directory name and table key
        label: dense landmarks, warp only   # first column of the table
        experiment: ablation_warp_dense_tiny.yaml   # relative to the set file
      - name: refine_full
        experiment: ablation_refine_full_tiny.yaml
        init_from: warp_dense               # start from that row's last checkpoint (model.init_from)
      - name: personalization_meta
        experiment: personalization.yaml
        optional: true                      # left out of the table (with a note) while the file is missing

A set may also make its data and end with a personalization benchmark of its rows' checkpoints
(``experiments/paper/personalization_tiny.yaml``)::

    synth: {identities: 20, personal_details: true, ...}   # write_synthetic_dataset(OUT/data, ...) if missing;
                                                           # every row then gets data.root=OUT/data
    evaluate: none        # keep the training metrics (no test evaluation)
    personalization_benchmark:                             # mp-lightning personalization-benchmark
      checkpoints: {standard: standard_row, meta: meta_row}
      identities: 6
      support_seconds: 0.4
      steps: [0, 1, 2, 5, 10, 20, 50]
      overrides: [reference=standard]                      # its key=value settings

Every row is trained with ``run_training`` and evaluated on the test split (self-reenactment and
cross-identity) with ``run_evaluation``; a row whose ``eval/metrics.json`` exists is reused, so an
interrupted ablation continues where it stopped. A row that fails is recorded as failed and the
others still run. The table (rows = variants, columns = metrics, the paper's layout) is written as
markdown and CSV and logged as a W&B table in an offline run.
"""
from __future__ import annotations

import csv
import json
import os
import traceback
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from mp_lightning.errors import ConfigError

SET_KIND = "ablation_set"
TABLE_MD = "ablation_table.md"
TABLE_CSV = "ablation_table.csv"
RESULTS_JSON = "ablation_results.json"


def is_ablation_set(path: str | Path) -> bool:
    try:
        node = OmegaConf.load(path)
    except Exception:
        return False
    return isinstance(node, DictConfig) and node.get("kind") == SET_KIND


def load_ablation_set(path: str | Path) -> dict:
    """Read and check an ablation set; experiment paths are made relative to the current directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ablation set not found: {path}")
    try:
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:
        raise ConfigError(f"cannot parse {path}: {err}") from err
    if not isinstance(node, dict) or node.get("kind") != SET_KIND:
        raise ConfigError(f"{path} is not an ablation set (it needs 'kind: {SET_KIND}' and 'rows:')")
    rows = node.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: 'rows' must be a non-empty list of {{name, experiment, overrides}}")
    seen = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "name" not in row or "experiment" not in row:
            raise ConfigError(f"{path}: row {i} needs 'name' and 'experiment'")
        if row["name"] in seen:
            raise ConfigError(f"{path}: row name '{row['name']}' is used twice")
        if row.get("init_from") and row["init_from"] not in seen:
            raise ConfigError(f"{path}: row '{row['name']}' starts from '{row['init_from']}', which is not an earlier row")
        seen.add(row["name"])
        row["experiment"] = str(path.parent / row["experiment"])
        row.setdefault("label", row["name"])
        row["overrides"] = [str(o) for o in row.get("overrides") or []]
    node.setdefault("name", path.stem)
    node["overrides"] = [str(o) for o in node.get("overrides") or []]
    node.setdefault("columns", None)
    node.setdefault("sets", ["self", "cross"])
    node.setdefault("evaluate", "test")
    if node["evaluate"] not in ("test", "validation", "none"):
        raise ConfigError(f"{path}: 'evaluate' must be test (run_evaluation on the test split), validation or none")
    if node.get("synth") is not None and not isinstance(node["synth"], dict):
        raise ConfigError(f"{path}: 'synth' must be a mapping of write_synthetic_dataset arguments")
    bench = node.get("personalization_benchmark")
    if bench is not None:
        if not isinstance(bench, dict) or not isinstance(bench.get("checkpoints"), dict) or not bench["checkpoints"]:
            raise ConfigError(f"{path}: 'personalization_benchmark' needs 'checkpoints: {{NAME: row}}'")
        for label, row in bench["checkpoints"].items():
            if row not in seen:
                raise ConfigError(f"{path}: personalization_benchmark checkpoint '{label}' names no row ('{row}')")
        bench["overrides"] = [str(o) for o in bench.get("overrides") or []]
    return node


def _row_overrides(ablation: dict, row: dict, extra: Sequence[str], run_dir: Path, done: dict) -> list[str]:
    overrides = [*ablation["overrides"], *row["overrides"]]
    if row.get("init_from"):
        overrides.append(f"model.init_from={done[row['init_from']]['last_checkpoint']}")
    return [*overrides, *extra, f"name={ablation['name']}/{row['name']}", f"run_dir={run_dir}",
            f"logger.group={ablation['name']}"]


def run_ablation(
    set_file: str | Path,
    extra_overrides: Iterable[str] = (),
    out_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
    log_wandb_table: bool = True,
    quiet: bool = False,
) -> dict:
    """Train + evaluate every row (reusing finished ones); returns {"rows", "table_md", "table_csv", ...}."""
    from mp_lightning.config.compose import compose
    from mp_lightning.runs.training import run_evaluation, run_training

    ablation = load_ablation_set(set_file)
    extra = list(extra_overrides)
    if out_dir is None:
        # `output_root=X` (an override every row gets) also moves the set's own folder
        roots = [o.split("=", 1)[1] for o in extra if o.startswith("output_root=")]
        out_dir = Path(roots[-1] if roots else "runs") / "ablations" / ablation["name"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    if ablation.get("synth") is not None:
        data_root = _synthetic_data(ablation["synth"], out_dir / "data", quiet)
        extra = [f"data.root={data_root}", *extra]

    def log(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    for row in ablation["rows"]:
        name = row["name"]
        entry = {"name": name, "label": row["label"], "experiment": row["experiment"]}
        results[name] = entry
        if only and name not in only:
            entry.update(state="skipped", note="not selected")
            continue
        if not Path(row["experiment"]).is_file():
            if row.get("optional"):
                entry.update(state="missing", note=f"{row['experiment']} does not exist yet")
                log(f"[{ablation['name']}] {name}: skipped ({entry['note']})")
                continue
            raise ConfigError(f"{set_file}: row '{name}': experiment file {row['experiment']} not found")
        run_dir = out_dir / name
        entry["run_dir"] = str(run_dir)
        entry["last_checkpoint"] = str(run_dir / "checkpoints" / "last.ckpt")
        metrics_file = run_dir / "eval" / "metrics.json"
        if metrics_file.is_file():
            entry.update(state="reused", metrics=json.loads(metrics_file.read_text())["metrics"])
            log(f"[{ablation['name']}] {name}: reusing {metrics_file}")
            continue
        if row.get("init_from") and results[row["init_from"]].get("state") not in ("finished", "reused"):
            entry.update(state="failed", error=f"row '{row['init_from']}' it starts from did not finish")
            continue
        try:
            overrides = _row_overrides(ablation, row, extra, run_dir, results)
            log(f"[{ablation['name']}] {name}: training {row['experiment']} " + " ".join(overrides))
            cfg = compose(row["experiment"], overrides)
            trained = run_training(cfg)
            if ablation["evaluate"] == "validation":
                metrics = _validation_metrics(trained, metrics_file)
            elif ablation["evaluate"] == "none":
                metrics = _training_metrics(trained, metrics_file)
            else:
                cfg = compose(row["experiment"], [*overrides, f"ckpt_path={trained['last_checkpoint']}"])
                metrics = run_evaluation(cfg, sets=tuple(ablation["sets"]))["metrics"]
            entry.update(state="finished", metrics=metrics, last_checkpoint=trained["last_checkpoint"])
        except Exception as err:  # one broken row must not cost the others
            entry.update(state="failed", error=f"{type(err).__name__}: {err}")
            (out_dir / f"{name}.error.txt").write_text(traceback.format_exc())
            log(f"[{ablation['name']}] {name}: FAILED: {entry['error']}")

    benchmark = None
    if ablation.get("personalization_benchmark") is not None:
        benchmark = _personalization_benchmark(ablation, results, out_dir, extra, log)

    table = ablation_table(ablation, list(results.values()))
    md_path, csv_path = out_dir / TABLE_MD, out_dir / TABLE_CSV
    md_path.write_text(table_markdown(ablation, table))
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([table["header"], *table["rows"]])
    summary = {"name": ablation["name"], "rows": list(results.values()), "table_md": str(md_path),
               "table_csv": str(csv_path), "columns": table["columns"]}
    if benchmark is not None:
        summary["personalization_benchmark"] = benchmark
    if log_wandb_table:
        summary["wandb_dir"] = log_table_to_wandb(ablation, table, out_dir)
    (out_dir / RESULTS_JSON).write_text(json.dumps(summary, indent=2))
    log(md_path.read_text())
    return summary


def _validation_metrics(trained: dict, metrics_file: Path) -> dict:
    """The last validation metrics of the run, for stages that `run_evaluation`'s test pairs do not fit
    (the SR stage reads frame windows); saved where a test evaluation would be, so the row is reused."""
    metrics = {k: v for k, v in trained["metrics"].items() if k.startswith("val/")}
    if not metrics:
        raise ConfigError("the run logged no validation metrics: validation never ran "
                          "(see trainer.check_val_every_n_epoch, trainer.val_check_interval, trainer.limit_val_batches)")
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps({"checkpoint": trained["last_checkpoint"], "source": "validation",
                                        "metrics": metrics}, indent=2))
    return metrics


def _training_metrics(trained: dict, metrics_file: Path) -> dict:
    """The run's last logged metrics, saved where a test evaluation would be, so the row is reused."""
    metrics = dict(trained["metrics"])
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps({"checkpoint": trained["last_checkpoint"], "source": "training",
                                        "metrics": metrics}, indent=2))
    return metrics


def _synthetic_data(synth: dict, root: Path, quiet: bool) -> Path:
    """The set's synthetic data, written once (the synth is deterministic, so a finished folder is reused)."""
    from datamodules import write_synthetic_dataset

    done = root / "synth.json"
    if not done.is_file():
        if not quiet:
            print(f"writing synthetic data {root}: {synth}", flush=True)
        summary = write_synthetic_dataset(root, **synth)
        done.write_text(json.dumps({"arguments": synth, "summary": summary}, indent=1))
    return root


def _personalization_benchmark(ablation: dict, results: dict, out_dir: Path, extra: Sequence[str], log) -> dict:
    """Run the personalization benchmark on the named rows' last checkpoints (data.root from the overrides)."""
    from mp_lightning.runs.personalization_benchmark import DEFAULT_STEPS, benchmark_config, run_benchmark

    bench = ablation["personalization_benchmark"]
    bench_dir = out_dir / "personalization_benchmark"
    roots = [o.split("=", 1)[1] for o in extra if o.startswith("data.root=")]
    root = bench.get("data") or (roots[-1] if roots else None)
    if root is None:
        return {"state": "failed", "error": "no data root (synth:, data.root=... or personalization_benchmark.data)"}
    missing = [row for row in bench["checkpoints"].values() if results[row].get("state") not in ("finished", "reused")]
    if missing:
        log(f"[{ablation['name']}] personalization benchmark: skipped, rows {missing} did not finish")
        return {"state": "skipped", "error": f"rows {missing} did not finish"}
    checkpoints = {label: results[row]["last_checkpoint"] for label, row in bench["checkpoints"].items()}
    log(f"[{ablation['name']}] personalization benchmark of {checkpoints} on {root}")
    try:
        summary = run_benchmark(checkpoints, root, bench_dir, split=bench.get("split", "test"),
                                identities=bench.get("identities"), support_seconds=float(bench.get("support_seconds", 1.0)),
                                steps=bench.get("steps") or DEFAULT_STEPS, config=benchmark_config(bench["overrides"]))
    except Exception as err:  # the rows' results stand without it
        (out_dir / "personalization_benchmark.error.txt").write_text(traceback.format_exc())
        log(f"[{ablation['name']}] personalization benchmark FAILED: {type(err).__name__}: {err}")
        return {"state": "failed", "error": f"{type(err).__name__}: {err}"}
    log((bench_dir / "summary.md").read_text())
    return {"state": "finished", "dir": str(bench_dir), "summary": summary}


def ablation_table(ablation: dict, rows: list[dict]) -> dict:
    """Rows = variants (label), columns = metrics (the set's `columns`, else every metric seen)."""
    columns = ablation.get("columns")
    if not columns:
        columns = []
        for r in rows:
            columns += [k for k in (r.get("metrics") or {}) if k not in columns]
    header = ["variant", *columns, "state"]
    body = []
    for r in rows:
        if r.get("state") == "skipped":
            continue
        metrics = r.get("metrics") or {}
        body.append([r["label"], *(f"{metrics[c]:.4f}" if c in metrics else "" for c in columns),
                     r["state"] if r["state"] in ("finished", "reused") else f"{r['state']}: {r.get('error') or r.get('note', '')}"])
    return {"header": header, "rows": body, "columns": columns}


def table_markdown(ablation: dict, table: dict) -> str:
    lines = [f"# {ablation['name']}", ""]
    if ablation.get("description"):
        lines += [str(ablation["description"]).strip(), ""]
    lines += ["| " + " | ".join(table["header"]) + " |", "|" + "---|" * len(table["header"])]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"


def log_table_to_wandb(ablation: dict, table: dict, out_dir: Path) -> str:
    """The table as a `wandb.Table` in an offline run under out_dir/wandb (`wandb sync` uploads it)."""
    import wandb

    wandb_dir = (out_dir / "wandb_table").resolve()
    wandb_dir.mkdir(parents=True, exist_ok=True)
    for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
        os.environ[var] = str(wandb_dir / sub)  # keep wandb's files out of the home directory
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=ablation.get("project", "mp-lightning"), group=ablation["name"],
                     name=f"{ablation['name']}/table", dir=str(wandb_dir), mode="offline", job_type="ablation")
    try:
        run.log({"ablation_table": wandb.Table(columns=table["header"], data=table["rows"])})
    finally:
        run.finish()
    return str(wandb_dir)
