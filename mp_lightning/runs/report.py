"""`mp-lightning report`: one self-contained HTML page for a run, a comparison or an ablation.

Everything the page shows is inside the file (plots as inline SVG, images and videos as data URIs), so it
opens on an air-gapped cluster, in a mail attachment or years later, without W&B or a server. It reads
only what the runs write locally:

- a training run dir: `config.yaml`, `csv/metrics.csv` (the CSV logger, on by default beside W&B),
  `eval/metrics.json` or `train_summary.json`, `data_report.json`, the latest `media/val_samples_*.png`
  and `media/val_clip_*.mp4`;
- a `compare` dir: `compare.csv` and `compare.mp4`;
- an `ablate` dir: `ablation_table.csv`, and each row's run linked as a section of its own.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

from mp_lightning.errors import ConfigError

MAX_CURVES = 24  # plots per page; the rest of the logged keys are listed by name


def write_report(source: str | Path, out: str | Path) -> Path:
    """Write the HTML report of `source` (a run, compare or ablation folder) to `out`."""
    source = Path(source)
    if not source.is_dir():
        raise ConfigError(f"mp-lightning report: {source} is not a folder (a run, compare or ablation output)")
    sections = _sections(source)
    if not sections:
        raise ConfigError(
            f"mp-lightning report: nothing to report in {source}: expected a run folder (config.yaml), a compare"
            " folder (compare.csv) or an ablation folder (ablation_table.csv)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(f"mp-lightning report: {source.name}", sections), encoding="utf-8")
    return out


def _sections(folder: Path) -> list[str]:
    sections = []
    if (folder / "compare.csv").is_file():
        sections.append(_h2("Comparison") + _csv_table(folder / "compare.csv"))
        sections += [_video(folder / "compare.mp4")] if (folder / "compare.mp4").is_file() else []
    if (folder / "ablation_table.csv").is_file():
        sections.append(_h2("Ablation") + _csv_table(folder / "ablation_table.csv"))
        for row in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "config.yaml").is_file()):
            sections.append(f"<details><summary>run {html.escape(row.name)}</summary>{''.join(_run(row))}</details>")
    if (folder / "config.yaml").is_file():
        sections += _run(folder)
    return sections


def _run(run_dir: Path) -> list[str]:
    parts = [_h2(f"Run {run_dir.name}")]
    final = _final_metrics(run_dir)
    if final:
        title, values = final
        parts.append(f"<h3>{html.escape(title)}</h3>" + _table(["metric", "value"],
                                                                 [[k, _fmt(v)] for k, v in values.items()]))
    history = _history(run_dir / "csv" / "metrics.csv")
    if history:
        parts.append("<h3>Curves</h3>" + _curves(history))
    else:
        parts.append("<p>No metric history: the run logged with <code>logger.type=none</code>"
                     " (or <code>logger.local_csv=false</code>).</p>")
    media = run_dir / "media"
    grids = sorted(media.glob("val_samples_*.png")) if media.is_dir() else []
    clips = sorted(media.glob("val_clip_*.mp4")) if media.is_dir() else []
    if grids:
        parts.append(f"<h3>Validation samples ({html.escape(grids[-1].stem)})</h3>" + _image(grids[-1]))
    if clips:
        parts.append(f"<h3>Validation clip ({html.escape(clips[-1].stem)})</h3>" + _video(clips[-1]))
    report = run_dir / "data_report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        rows = [[name, s.get("clips_usable"), s.get("clips_bad"), s.get("identities_usable")]
                for name, s in data.get("splits", {}).items()]
        parts.append("<h3>Data</h3>" + _table(["split", "usable clips", "bad clips", "identities"], rows))
        if "validation" in data:
            v = data["validation"]
            parts.append(f"<p>Validation identities ({html.escape(str(v.get('split')))}): "
                         f"{html.escape(', '.join(v.get('identities', [])))}; sets: {html.escape(', '.join(v.get('sets', [])))}</p>")
    parts.append("<h3>Config</h3><pre>" + html.escape((run_dir / "config.yaml").read_text()) + "</pre>")
    return parts


def _final_metrics(run_dir: Path) -> tuple[str, dict] | None:
    evaluation = run_dir / "eval" / "metrics.json"
    if evaluation.is_file():
        return "Test metrics (eval)", json.loads(evaluation.read_text()).get("metrics", {})
    summary = run_dir / "train_summary.json"
    if summary.is_file():
        metrics = json.loads(summary.read_text()).get("metrics", {})
        return "Final metrics (end of training)", dict(sorted(metrics.items()))
    return None


def _history(path: Path) -> dict[str, list[tuple[float, float]]]:
    """{key: [(step, value), ...]} from Lightning's CSV logger (one row per logging call, blanks elsewhere)."""
    if not path.is_file():
        return {}
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            step = row.get("step")
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, "") or step in (None, ""):
                    continue
                try:
                    series.setdefault(key, []).append((float(step), float(value)))
                except ValueError:
                    continue
    return series


def _curves(history: dict[str, list[tuple[float, float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(history, key=lambda k: (not k.startswith("val/"), k))
    shown, rest = keys[:MAX_CURVES], keys[MAX_CURVES:]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, shown):
        steps, values = zip(*history[key])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prologue: the SVG sits inline in the page
    more = f"<p>Also logged: {html.escape(', '.join(rest))}</p>" if rest else ""
    return f'<div class="curves">{svg}</div>{more}'


def _csv_table(path: Path) -> str:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return _table(rows[0], rows[1:]) if rows else "<p>(empty table)</p>"


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _video(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<video controls loop muted src="data:video/mp4;base64,{data}"></video>'


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _h2(title: str) -> str:
    return f"<h2>{html.escape(title)}</h2>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table.metrics { border-collapse: collapse; margin: 0.5em 0; }
table.metrics td, table.metrics th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
table.metrics td:first-child, table.metrics th:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 85%; }
img, video, .curves svg { max-width: 100%; height: auto; }
"""


def _page(title: str, sections: list[str]) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n")
