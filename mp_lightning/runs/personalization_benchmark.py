"""The personalization benchmark: how fast does each initialization adapt to a person it never saw?

Protocol, for each held-out identity of `ROOT/SPLIT` (vox layout `<identity>/<video>/<clip>.mp4`, identities
in name order, the first N):

* support: the first `support_seconds` of the first clip of the identity's first video; the source image
  is that clip's first frame (the synthetic data with `--personal-details` starts every clip frontal with
  the mouth closed, so the source hides the teeth, the side mark and the earring);
* evaluation: frames of the identity's *other* videos, or, when it has one video, the unseen remainder of
  the support clip and the video's other clips; at most `max_eval_frames`, evenly spaced;
* every checkpoint is fine-tuned from its own weights with the personalization recipe
  (`mp_lightning.personalize.PersonalizationRecipe`) and scored after each step count of `steps` by the
  training metric suite (`mp_lightning.runs.personalize.Evaluator`): LPIPS and ST-LPIPS, L1, PSNR, SSIM
  (prediction vs the real frame) and identity similarity (prediction vs source; FaceNet and dlib), each
  where its weights are installed, `*_random` names for random networks; the cumulative optimizer seconds
  are kept beside them.

Identities are split over processes when run under torchrun / DDP (`RANK`, `WORLD_SIZE`); rank 0 gathers
and writes `summary.json` (`{"steps", "identities", "methods": {NAME: {METRIC: {"mean", "std"}, "seconds"}}}`),
`summary.md`, `curves.png` and `per_identity.json`, and logs the table and the plot to W&B.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from mp_lightning.errors import ConfigError, DataError
from mp_lightning.runs.personalize import (
    EVALUATION_METRICS,
    Evaluator,
    PersonalizationRecipe,
    PersonalizationSettings,
    fine_tune_curve,
    load_clip,
)

DEFAULT_STEPS = (0, 1, 2, 5, 10, 20, 50)


@dataclass
class BenchmarkConfig(PersonalizationSettings):
    """`key=value` settings of `mp-lightning personalization-benchmark` (besides its flags): those it shares with
    `mp-lightning personalize` (max_eval_frames, lpips_pretrained, identity_pretrained, seed, device) and these."""

    recipe: PersonalizationRecipe = field(default_factory=PersonalizationRecipe)
    reference: Optional[str] = None  # summary.md: steps each method needs to reach this one's last-step value
    wandb: str = "offline"  # offline | online | disabled
    eval_batch_size: int = 8
    # the metric suite's names (mp_lightning.metrics.suite.ALL_METRICS) scored after each step count
    metrics: List[str] = field(default_factory=lambda: list(EVALUATION_METRICS))


def benchmark_config(overrides: Sequence[str] = ()) -> BenchmarkConfig:
    from mp_lightning.config.compose import _check_keys, parse_overrides

    schema = OmegaConf.structured(BenchmarkConfig)
    raw = parse_overrides(overrides)
    _check_keys(raw, schema)
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, raw))
    except Exception as err:  # OmegaConf's type errors name the key
        raise ConfigError(f"personalization-benchmark: {err}") from err


# ------------------------------------------------------------------------------------------------ protocol
@dataclass
class ClipFrames:
    clip: str  # path of the .mp4
    frames: list  # frame indices


@dataclass
class IdentityTask:
    identity: str
    fps: float
    support: ClipFrames  # the source is support.frames[0]
    evaluation: list  # [ClipFrames]

    def support_set(self) -> set:
        return {(self.support.clip, f) for f in self.support.frames}

    def evaluation_set(self) -> set:
        return {(c.clip, f) for c in self.evaluation for f in c.frames}


def _clip_length_and_fps(clip: Path) -> tuple[int, float]:
    import av

    landmarks = clip.with_suffix(".landmarks.npy")
    if not landmarks.is_file():
        raise DataError(f"no landmarks beside {clip}: expected {landmarks}")
    n = int(np.load(landmarks, mmap_mode="r").shape[0])
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        if stream.frames:
            n = min(n, int(stream.frames))
    return n, fps


def _spread(clips: list[tuple[Path, list[int]]], limit: int) -> list[ClipFrames]:
    """At most `limit` frames, evenly spaced over the concatenation of the clips' candidate frames."""
    flat = [(str(c), f) for c, frames in clips for f in frames]
    if not flat:
        return []
    keep = np.unique(np.linspace(0, len(flat) - 1, min(limit, len(flat))).round().astype(int))
    out: dict[str, list[int]] = {}
    for i in keep:
        clip, frame = flat[i]
        out.setdefault(clip, []).append(frame)
    return [ClipFrames(c, f) for c, f in out.items()]


def benchmark_tasks(root: str | Path, split: str = "test", identities: Optional[int] = None,
                    support_seconds: float = 1.0, max_eval_frames: int = 32) -> list[IdentityTask]:
    """The protocol's support and evaluation frames of the first `identities` identities of ROOT/SPLIT."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"personalization benchmark: no split folder {split_dir}")
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if identities is not None:
        names = names[:identities]
    tasks = []
    for name in names:
        videos = sorted(p for p in (split_dir / name).iterdir() if p.is_dir() and any(p.glob("*.mp4")))
        if not videos:
            raise DataError(f"personalization benchmark: {split_dir / name} holds no <video>/<clip>.mp4")
        clips_of = {v: sorted(v.glob("*.mp4")) for v in videos}
        support_clip = clips_of[videos[0]][0]
        length, fps = _clip_length_and_fps(support_clip)
        n_support = int(round(support_seconds * fps))
        if n_support < 1 or n_support > length:
            raise DataError(f"--support-seconds {support_seconds} gives {n_support} support frames of the "
                            f"{length} of {support_clip} at {fps:g} fps")
        if len(videos) > 1:
            candidates = [(c, list(range(_clip_length_and_fps(c)[0]))) for v in videos[1:] for c in clips_of[v]]
        else:
            candidates = [(support_clip, list(range(n_support, length)))]
            candidates += [(c, list(range(_clip_length_and_fps(c)[0]))) for c in clips_of[videos[0]][1:]]
        evaluation = _spread(candidates, max_eval_frames)
        if not evaluation:
            raise DataError(f"personalization benchmark: identity {name} has no frame left for evaluation "
                            f"(one video, one clip of {length} frames, {n_support} of them support)")
        tasks.append(IdentityTask(name, fps, ClipFrames(str(support_clip), list(range(n_support))), evaluation))
    if not tasks:
        raise DataError(f"personalization benchmark: no identities in {split_dir}")
    return tasks


def check_held_out(checkpoint: str | Path, tasks: list[IdentityTask], root: str | Path, split: str) -> None:
    """The benchmark's identities must not be among those the checkpoint trained on (when it trained on ROOT)."""
    from mp_lightning.state_dicts import read_checkpoint

    hp = read_checkpoint(checkpoint, weights_only=False).get("hyper_parameters") or {}
    data = (hp.get("config") or {}).get("data") or {}
    if not data.get("root"):
        return
    if Path(data["root"]).resolve() != Path(root).resolve():
        return
    train_split = data.get("train_split", "train")
    if train_split == split:
        raise ConfigError(f"{checkpoint} trained on {root}/{train_split}: benchmark its held-out split instead of "
                          f"--split {split}")
    trained = {p.name for p in (Path(root) / train_split).iterdir()} if (Path(root) / train_split).is_dir() else set()
    seen = sorted(trained & {t.identity for t in tasks})
    if seen:
        raise ConfigError(f"{checkpoint} trained on identities {seen} of {root}/{train_split}, which the benchmark "
                          f"would personalize on: they are not held out")


# ------------------------------------------------------------------------------------------------ running
def shard(items: list, rank: int, world: int) -> list:
    """The items one DDP rank handles: every `world`-th from `rank` (identities are independent)."""
    return items[rank::world]


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(results: list, world: int) -> list:
    if world == 1:
        return results
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, results)
    return [r for part in gathered for r in part]


def _frames(cache: dict, clip: str, frames: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if clip not in cache:
        cache.clear()  # one clip at a time: identities are visited in turn
        cache[clip] = load_clip(clip, size)
    data = cache[clip]
    idx = torch.as_tensor(frames)
    return data["frames"][idx], data["landmarks"][idx]


def run_identity(stage, task: IdentityTask, steps: list[int], cfg: BenchmarkConfig, evaluator: Evaluator,
                 image_size: int) -> dict:
    """Fine-tune `stage` (in place) on one identity's support; the metric curve over `steps`."""
    cache: dict = {}
    support, support_lm = _frames(cache, task.support.clip, task.support.frames, image_size)
    source, source_lm = support[0], support_lm[0]
    parts = [_frames(cache, c.clip, c.frames, image_size) for c in task.evaluation]
    frames = torch.cat([p[0] for p in parts])
    landmarks = torch.cat([p[1] for p in parts])

    def evaluate() -> dict:
        return evaluator(stage, source, source_lm, frames, landmarks, batch_size=cfg.eval_batch_size)

    curve = fine_tune_curve(stage, source, source_lm, support, support_lm, steps, cfg.recipe, evaluate,
                            seed=cfg.seed)
    return {"identity": task.identity, "steps": curve["steps"], "seconds": curve["train_seconds"],
            "metrics": curve["metrics"], "loss": curve["loss"], "support_frames": len(task.support.frames),
            "evaluation_frames": int(frames.shape[0])}


def run_benchmark(checkpoints: dict[str, str], root: str | Path, out_dir: str | Path, split: str = "test",
                  identities: Optional[int] = None, support_seconds: float = 1.0,
                  steps: Sequence[int] = DEFAULT_STEPS, config: BenchmarkConfig | None = None,
                  progress: bool = True) -> dict:
    """Run the protocol for every checkpoint; returns the summary (written on rank 0 only)."""
    from mp_lightning.preprocess.inputs import resolve_device
    from mp_lightning.runs.personalize import _image_size
    from mp_lightning.stages.base import load_stage

    cfg = config or BenchmarkConfig()
    steps = sorted({int(s) for s in steps})
    if not checkpoints:
        raise ConfigError("personalization-benchmark: give at least one --checkpoint NAME=CKPT")
    if steps[0] < 0:
        raise ConfigError("--steps must be >= 0")
    if cfg.reference is not None and cfg.reference not in checkpoints:
        raise ConfigError(f"reference={cfg.reference} names no --checkpoint (have: {', '.join(checkpoints)})")
    tasks = benchmark_tasks(root, split, identities, support_seconds, cfg.max_eval_frames)
    for ckpt in checkpoints.values():
        check_held_out(ckpt, tasks, root, split)
    rank, world = _distributed()
    device = cfg.device
    if device == "auto" and world > 1 and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    device = resolve_device(device)
    evaluator = Evaluator(cfg.lpips_pretrained, cfg.identity_pretrained, names=tuple(cfg.metrics))
    if rank == 0:
        for reason in evaluator.skipped.values():
            print(reason, flush=True)
    mine = shard(tasks, rank, world)
    results: list[dict] = []
    for name, ckpt in checkpoints.items():
        for task in mine:
            # a fresh copy of the initialization per identity
            stage = load_stage(ckpt, map_location=device, eval_mode=False).unwrapped()
            torch.manual_seed(cfg.seed)
            row = run_identity(stage, task, steps, cfg, evaluator, _image_size(stage))
            results.append({"method": name, **row})
            if progress:
                last = {k: round(v[-1], 4) for k, v in row["metrics"].items()}
                first = {k: round(v[0], 4) for k, v in row["metrics"].items()}
                print(f"[rank {rank}] {name} {task.identity}: step {steps[0]} {first} -> step {steps[-1]} {last} "
                      f"({row['seconds'][-1]:.1f} s)", flush=True)
    results = _gather(results, world)
    summary = summarize(results, list(checkpoints), steps, len(tasks))
    if rank == 0:
        higher = {m: evaluator.higher_is_better(m) for m in metric_names(summary)}
        write_outputs(summary, results, tasks, out_dir, cfg, checkpoints, higher,
                      {"root": str(root), "split": split, "support_seconds": support_seconds,
                       "skipped_metrics": evaluator.skipped})
    return summary


# ------------------------------------------------------------------------------------------------ outputs
def summarize(results: list[dict], methods: list[str], steps: list[int], identities: int) -> dict:
    """`{"steps", "identities", "methods": {NAME: {METRIC: {"mean", "std"}, "seconds"}}}` (std over identities)."""
    out = {"steps": steps, "identities": identities, "methods": {}}
    for name in methods:
        rows = [r for r in results if r["method"] == name]
        entry = {}
        for metric in rows[0]["metrics"]:
            # NaN where a metric had nothing to score for an identity (dlib found no face): left out of the mean
            values = np.array([r["metrics"][metric] for r in rows], dtype=np.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
                mean = np.nanmean(values, 0)
                std = np.nanstd(values, 0, ddof=1) if len(rows) > 1 else np.zeros(len(steps))
            entry[metric] = {"mean": mean.tolist(), "std": np.nan_to_num(std, nan=0.0).tolist()}
        entry["seconds"] = np.array([r["seconds"] for r in rows], dtype=np.float64).mean(0).tolist()
        out["methods"][name] = entry
    return out


def metric_names(summary: dict) -> list[str]:
    """The metrics of a summary, in the evaluator's order."""
    entry = next(iter(summary["methods"].values()))
    return [k for k in entry if k != "seconds"]


def steps_to_reach(summary: dict, method: str, reference: str, metric: str, higher_is_better: bool) -> Optional[int]:
    """The first step count at which `method`'s mean is at least as good as `reference`'s at the last step."""
    target = summary["methods"][reference][metric]["mean"][-1]
    for step, value in zip(summary["steps"], summary["methods"][method][metric]["mean"]):
        if (value >= target) if higher_is_better else (value <= target):
            return step
    return None


def worst_change_from_start(summary: dict, method: str, metric: str, higher_is_better: bool):
    """(step, change) of the step count whose mean is furthest on the worse side of step 0's, or None when no
    step count is worse than the start (the first step count must be 0)."""
    mean = summary["methods"][method][metric]["mean"]
    sign = -1.0 if higher_is_better else 1.0
    worst = max(range(len(mean)), key=lambda i: sign * (mean[i] - mean[0]) if not np.isnan(mean[i]) else -np.inf)
    change = mean[worst] - mean[0]
    return None if not sign * change > 0 else (summary["steps"][worst], change)


def summary_markdown(summary: dict, higher_is_better: dict[str, bool], reference: Optional[str] = None,
                     context: dict | None = None) -> str:
    """`higher_is_better`: {metric: bool} for every metric of the summary."""
    from mp_lightning.metrics.suite import METRIC_NETWORKS

    steps, metrics = summary["steps"], metric_names(summary)
    lines = ["# Personalization benchmark", ""]
    skipped = (context or {}).get("skipped_metrics") or {}
    if context:
        lines += [", ".join(f"{k}: {v}" for k, v in context.items() if k != "skipped_metrics"), ""]
    lines += [f"{summary['identities']} held-out identities; mean +- std over identities.", ""]
    lines += ["Networks: " + "; ".join(f"{m}: {METRIC_NETWORKS.get(m, m)}" for m in metrics), ""]
    lines += [f"Skipped: {reason}" for reason in skipped.values()] + ([""] if skipped else [])
    for metric in (*metrics, "seconds"):
        arrow = "" if metric == "seconds" else (" (higher is better)" if higher_is_better[metric] else
                                                 " (lower is better)")
        lines += [f"## {metric}{arrow}", "", "| method | " + " | ".join(f"{s} steps" for s in steps) + " |",
                  "|---|" + "---|" * len(steps)]
        for name, entry in summary["methods"].items():
            if metric == "seconds":
                cells = [f"{v:.2f}" for v in entry["seconds"]]
            else:
                cells = [f"{m:.4f} +- {s:.4f}" for m, s in zip(entry[metric]["mean"], entry[metric]["std"])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if steps[0] == 0:
        lines += ["## worst change from step 0 (mean over identities; personalization should never make it worse)", "",
                  "| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for name in summary["methods"]:
            cells = [worst_change_from_start(summary, name, m, higher_is_better[m]) for m in metrics]
            lines.append(f"| {name} | " + " | ".join(
                "never worse" if c is None else f"{c[1]:+.2e} at {c[0]} steps" for c in cells) + " |")
        lines.append("")
    if reference:
        lines += [f"## steps to reach {reference}'s value at {steps[-1]} steps", "",
                  "| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for name in summary["methods"]:
            cells = [steps_to_reach(summary, name, reference, m, higher_is_better[m]) for m in metrics]
            lines.append(f"| {name} | " + " | ".join("not reached" if c is None else str(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_summary(summary: dict, path: str | Path) -> Path:
    """Metric vs steps (top row) and vs optimizer seconds (bottom row), one line per method, +- std shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = metric_names(summary)
    fig, axes = plt.subplots(2, len(metrics), figsize=(3.4 * len(metrics), 6), squeeze=False)
    for j, metric in enumerate(metrics):
        for name, entry in summary["methods"].items():
            mean, std = np.array(entry[metric]["mean"]), np.array(entry[metric]["std"])
            for i, x in enumerate((np.array(summary["steps"], dtype=float), np.array(entry["seconds"]))):
                ax = axes[i][j]
                ax.plot(x, mean, marker="o", ms=3, label=name)
                ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        for i, label in enumerate(("steps", "fine-tuning seconds")):
            ax = axes[i][j]
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlabel(label)
            ax.set_title(metric)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"personalization on {summary['identities']} held-out identities")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def write_outputs(summary: dict, results: list[dict], tasks: list[IdentityTask], out_dir: str | Path,
                  cfg: BenchmarkConfig, checkpoints: dict, higher_is_better: dict[str, bool], context: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "per_identity.json").write_text(json.dumps({
        "checkpoints": checkpoints, "config": asdict(cfg), **context,
        "tasks": [asdict(t) for t in tasks], "results": results}, indent=1) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary, higher_is_better, cfg.reference, context))
    plot = plot_summary(summary, out / "curves.png")
    if cfg.wandb != "disabled":
        _log_wandb(summary, plot, out, cfg.wandb)


def _log_wandb(summary: dict, plot: Path, out: Path, mode: str) -> None:
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project="mp-lightning", name=f"personalization-{out.name}", dir=str(out), mode=mode,
                     job_type="personalization-benchmark")
    try:
        metrics = metric_names(summary)
        columns = ["method", "steps", "seconds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
        data = []
        for name, entry in summary["methods"].items():
            for i, step in enumerate(summary["steps"]):
                data.append([name, step, entry["seconds"][i]]
                            + [entry[m][s][i] for m in metrics for s in ("mean", "std")])
        run.log({"personalization/table": wandb.Table(columns=columns, data=data),
                 "personalization/curves": wandb.Image(str(plot))})
    finally:
        run.finish()
