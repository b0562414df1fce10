"""Side-by-side evaluation of methods on the same test split, pairs and metrics.

Every method is evaluated by `run_evaluation` (self-reenactment and cross-identity sets of the same
data, seeded identically), so the numbers in one table are comparable; a grid video shows every
method animating the same source with the same driving clip.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from mp_lightning.errors import ConfigError


#: data settings that decide which test pairs and pixels a method is scored on: equal for every method
EVALUATION_DATA_KEYS = ("root", "test_split", "image_size", "eval_seed", "val_samples_per_clip", "val_max_samples",
                        "max_frame_distance")


def check_same_evaluation_data(configs: dict) -> None:
    """Refuse a comparison whose methods would be scored on different data, naming the keys that differ."""
    names = list(configs)
    differ = []
    for key in EVALUATION_DATA_KEYS:
        values = {name: configs[name].data.get(key) for name in names}
        if len({repr(v) for v in values.values()}) > 1:
            differ.append(f"data.{key} (" + ", ".join(f"{n}: {v!r}" for n, v in values.items()) + ")")
    if differ:
        raise ConfigError("compare: the methods would be evaluated on different data, so their numbers are not"
                          " comparable: " + "; ".join(differ) + ". Pass the same value to all (e.g. data.root=...)")


@dataclass
class Method:
    name: str
    experiment: str
    checkpoint: str


def methods_from_args(items: Sequence[str]) -> list[Method]:
    """`EXP_A.yaml CKPT_A EXP_B.yaml CKPT_B ...` or one compare file listing methods."""
    if len(items) == 1 and items[0].endswith((".yaml", ".yml")):
        from omegaconf import OmegaConf

        spec = OmegaConf.load(items[0])
        if "methods" not in spec:
            raise ConfigError(f"{items[0]}: a compare file needs a 'methods' list of {{name, experiment, checkpoint}}")
        base = Path(items[0]).parent
        return [Method(m.get("name") or Path(m.experiment).stem, str(base / m.experiment) if not Path(m.experiment).is_absolute()
                       and not Path(m.experiment).exists() else str(m.experiment), str(m.checkpoint)) for m in spec.methods]
    if len(items) < 2 or len(items) % 2:
        raise ConfigError("compare takes pairs: EXP_A.yaml CKPT_A [EXP_B.yaml CKPT_B ...] (or one compare .yaml)")
    methods = []
    for exp, ckpt in zip(items[0::2], items[1::2]):
        name = Path(exp).stem
        if any(m.name == name for m in methods):
            name = f"{name}_{len(methods)}"
        methods.append(Method(name, exp, ckpt))
    return methods


def run_compare(methods: list[Method], out_dir: str | Path, overrides: Sequence[str] = (),
                video_frames: int = 32, wandb_mode: str = "offline", source_identity: str | Path | None = None) -> dict:
    from mp_lightning.config.compose import compose, model_overrides_of
    from mp_lightning.runs.training import run_evaluation

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, float]] = {}
    descriptors: dict[str, str] = {}  # method -> motion-descriptor kind, for the methods driven by one
    configs, stages = {}, {}
    for m in methods:
        configs[m.name] = compose(m.experiment, [f"ckpt_path={m.checkpoint}", f"name={m.name}",
                                                 f"output_root={out_dir}", "logger.type=none", *overrides])
    check_same_evaluation_data(configs)
    protocols = {}
    # each model is its checkpoint's; model keys among the overrides are set over every checkpoint's config
    model_overrides = model_overrides_of(overrides)
    for m in methods:
        print(f"== {m.name}: {m.experiment} @ {m.checkpoint}")
        result = run_evaluation(configs[m.name], model_overrides=model_overrides)
        rows[m.name], protocols[m.name], stages[m.name] = result["metrics"], result["cross_identity_protocol"], result["stage"]
        if result.get("descriptor"):
            descriptors[m.name] = result["descriptor"]
    metrics = sorted({k for r in rows.values() for k in r})
    (out_dir / "compare.csv").write_text(_csv(rows, metrics, protocols))
    notes = "".join(f"\n{name}: driven by {kind} motion descriptors\n" for name, kind in descriptors.items())
    (out_dir / "compare.md").write_text(_markdown(rows, metrics, protocols) + notes)
    (out_dir / "compare.json").write_text(json.dumps({"methods": [m.__dict__ for m in methods], "metrics": rows,
                                                      "cross_identity_protocol": protocols,
                                                      "descriptors": descriptors}, indent=2))
    video = (compare_video(methods, configs, stages, out_dir / "compare.mp4", video_frames, source_identity)
             if video_frames > 0 else None)
    _log_wandb(rows, metrics, out_dir, video, wandb_mode)
    return {"rows": rows, "metrics": metrics, "dir": str(out_dir), "video": str(video) if video else None}


def _csv(rows, metrics, protocols) -> str:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", *metrics, "cross-identity protocol"])
    for name, r in rows.items():
        writer.writerow([name, *[f"{r[k]:.6f}" if k in r else "" for k in metrics], protocols[name]])
    return buf.getvalue()


def _markdown(rows, metrics, protocols) -> str:
    lines = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.4f}" if k in r else "" for k in metrics) + " |")
    lines += ["", "Cross-identity protocol (each method's published one):", ""]
    lines += [f"- {name}: {protocol}" for name, protocol in protocols.items()]
    return "\n".join(lines) + "\n"


def compare_video(methods: list[Method], configs: dict, stages: dict, path: Path, num_frames: int,
                  source_identity: str | Path | None = None) -> Path | None:
    """source | driving | method 1 | method 2 ... on the first two test clips (cross-identity driving);
    `stages`: each method's evaluated stage, by name."""
    from mp_lightning.io.video import write_video
    from mp_lightning.preprocess.inputs import load_driving, load_source, load_source_inputs

    first = configs[methods[0].name]
    clips = sorted((Path(first.data.root) / first.data.test_split).rglob("*.mp4"))
    if len(clips) < 2:
        return None
    columns = []
    for m in methods:
        stage = stages[m.name]
        size = int(configs[m.name].data.image_size)
        source, source_lm = load_source(clips[0], size=size)
        driving, driving_lm = load_driving(clips[-1], size=size, max_frames=num_frames)
        kwargs = {"relative": True}
        extra = load_source_inputs(stage, clips[0], source_identity)
        if extra:
            kwargs["extra"] = extra
        kwargs.update(stage.animation_inputs(source=clips[0], driving=clips[-1]))  # e.g. PIRender's descriptors
        frames = stage.animate(source, driving, driving_lm, source_lm, **kwargs)
        if not columns:
            columns = [source[None].expand_as(frames), driving]
        columns.append(torch.nn.functional.interpolate(frames, size=columns[0].shape[-2:], mode="bilinear",
                                                       align_corners=False))
    return write_video(path, torch.cat([c.clamp(0, 1) for c in columns], dim=3), fps=10)


def _log_wandb(rows, metrics, out_dir: Path, video, mode: str) -> None:
    if mode == "disabled":
        return
    import os

    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project="mp-lightning", name=f"compare-{out_dir.name}", dir=str(out_dir), mode=mode,
                     job_type="compare")
    try:
        table = wandb.Table(columns=["method", *metrics],
                            data=[[n, *[r.get(k) for k in metrics]] for n, r in rows.items()])
        payload = {"compare/table": table}
        if video:
            payload["compare/video"] = wandb.Video(str(video), format="mp4")
        run.log(payload)
    finally:
        run.finish()
