"""Fast personalization: fine-tune a checkpoint on the first seconds of one person's clip.

The stage's own loss (no GAN term, as in the meta-learning inner loop) is minimised on pairs
(first frame -> a frame of the first `seconds`), and the model is evaluated on the remaining frames
of the clip at a schedule of step counts (0, 1, 2, 5, 10, 20, 50, ... and the last step): LPIPS,
identity similarity (prediction vs source), PSNR, SSIM and L1. Writes the personalized checkpoint,
`curve.json` and `curve.png` (metrics against steps and against training seconds).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mp_lightning.errors import DataError
from mp_lightning.io.video import read_video, video_fps
from mp_lightning.reptile import adapt, adaptation_groups, make_inner_optimizer
from mp_lightning.stages.base import save_stage_checkpoint


def step_schedule(steps: int, every: Optional[int] = None) -> list[int]:
    """0, 1, 2, 5, 10, 20, 50, 100, ... up to `steps` (always included), plus multiples of `every`."""
    marks = {0, steps}
    scale = 1
    while scale <= steps:
        marks.update(m * scale for m in (1, 2, 5) if m * scale <= steps)
        scale *= 10
    if every:
        marks.update(range(0, steps + 1, every))
    return sorted(marks)


def load_clip(video: str | Path, image_size: int) -> dict:
    """frames (T, 3, S, S) in [0, 1], landmarks (T, K, 2) in [0, 1] (from <clip>.landmarks.npy), fps."""
    video = Path(video)
    if not video.is_file():
        raise DataError(f"video not found: {video}")
    landmarks_path = video.with_suffix(".landmarks.npy")
    if not landmarks_path.is_file():
        raise DataError(f"no landmarks beside the video: expected {landmarks_path} (run `mp-lightning preprocess`)")
    fps, frames = video_fps(video), read_video(video)
    landmarks = np.load(landmarks_path).astype(np.float32)
    n = min(len(frames), len(landmarks))
    if n < 2:
        raise DataError(f"{video}: needs at least 2 frames with landmarks, has {n}")
    images = torch.from_numpy(frames[:n]).permute(0, 3, 1, 2).float() / 255.0
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="area")
    out = {"frames": images, "landmarks": torch.from_numpy(landmarks[:n]), "fps": fps}
    semantics_path = video.with_suffix(".semantics.npy")  # motion descriptors (F, 73), when the clip has them
    if semantics_path.is_file():
        out["semantics"] = torch.from_numpy(np.load(semantics_path).astype(np.float32)[:n])
    return out


def _image_size(stage) -> int:
    hp = getattr(stage, "hp", None)
    net = getattr(hp, "net", None)
    return int(getattr(net, "image_size", 0) or stage.experiment_config.get("data", {}).get("image_size", 256))


class Evaluator:
    """Metrics of a stage's predictions on held-out frames (source = first frame)."""

    def __init__(self, lpips_pretrained: bool = True, identity_pretrained: bool = True, identity: bool = True):
        from mp_lightning.metrics.suite import L1, LPIPS, PSNR, SSIM, IdentitySimilarity

        self.metrics = {"lpips": LPIPS(pretrained=lpips_pretrained), "psnr": PSNR(), "ssim": SSIM(), "l1": L1()}
        if identity:
            self.metrics["identity"] = IdentitySimilarity(pretrained=identity_pretrained)

    def __call__(self, stage, source, source_lm, frames, landmarks, batch_size: int = 8, extra: dict | None = None,
                 **animate_inputs) -> dict:
        was_training = stage.training
        stage.eval()
        preds = stage.animate(source, frames, landmarks, source_lm, batch_size=batch_size,
                              **({"extra": extra} if extra else {}), **animate_inputs)
        stage.train(was_training)
        values = {}
        for name, metric in self.metrics.items():
            metric.reset()
            if name == "identity":
                metric.update(preds, source.unsqueeze(0).expand_as(preds))
            else:
                metric.update(preds, frames)
            values[name] = float(metric.compute())
        return values


def personalize(stage, video: str | Path, seconds: float, steps: int, out_dir: str | Path,
                eval_every: Optional[int] = None, lr: float = 2e-4, warp_lr_multiplier: float = 0.1,
                betas: Iterable[float] = (0.5, 0.999), grad_clip: float = 0.3, batch_size: int = 4,
                max_eval_frames: int = 32, lpips_pretrained: bool = True, identity_pretrained: bool = True,
                identity: bool = True, progress: bool = True, seed: int = 0, write_checkpoint: bool = True,
                source_identity: str | Path | None = None) -> dict:
    """Fine-tune `stage` (in place) on the first `seconds` of `video`; returns the curve dict.

    The schedule is `step_schedule(steps, eval_every)`; evaluation time is not counted in `seconds`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = load_clip(video, _image_size(stage))
    frames, landmarks, fps = clip["frames"], clip["landmarks"], clip["fps"]
    n_train = int(round(seconds * fps))
    if n_train < 1 or n_train >= len(frames):
        raise DataError(f"--seconds {seconds} gives {n_train} training frames of {len(frames)} at {fps:g} fps; "
                        f"leave at least one frame for evaluation")
    held = torch.linspace(n_train, len(frames) - 1, min(max_eval_frames, len(frames) - n_train)).round().long().unique()
    device = stage.device
    source, source_lm = frames[0], landmarks[0]
    from mp_lightning.preprocess.inputs import load_source_inputs

    extra = load_source_inputs(stage, video, source_identity)  # e.g. the official weights' precomputed identity
    evaluator = Evaluator(lpips_pretrained, identity_pretrained, identity)
    groups = adaptation_groups(stage, warp_lr_multiplier)
    params = [p for g in groups for p in g["params"]]
    optimizer = make_inner_optimizer(groups, lr, betas)
    rng = np.random.default_rng(seed)
    schedule = step_schedule(steps, eval_every)
    curve = {"video": str(video), "fps": fps, "seconds_of_video": seconds, "train_frames": n_train,
             "eval_frames": int(len(held)), "steps": [], "train_seconds": [], "metrics": {}, "loss": []}

    # inputs a stage derives from the clip beyond frames and landmarks (PIRender's descriptor windows):
    # (extra batch keys, extra `animate` arguments)
    held_animate = stage.clip_inputs(clip, 0, held)[1]

    def evaluate(step: int, elapsed: float) -> None:
        values = evaluator(stage, source, source_lm, frames[held], landmarks[held], extra=extra, **held_animate)
        curve["steps"].append(step)
        curve["train_seconds"].append(elapsed)
        for k, v in values.items():
            curve["metrics"].setdefault(k, []).append(v)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="personalize", unit="step")
    stage.train()
    elapsed = 0.0
    evaluate(0, 0.0)
    for step in range(1, steps + 1):
        idx = torch.as_tensor(rng.integers(0, n_train, size=batch_size))
        batch = {
            "source": source.unsqueeze(0).expand(batch_size, -1, -1, -1).to(device),
            "source_landmarks": source_lm.unsqueeze(0).expand(batch_size, -1, -1).to(device),
            "driving": frames[idx].to(device), "driving_landmarks": landmarks[idx].to(device),
            **{k: v.expand(batch_size, *v.shape[1:]).to(device) for k, v in extra.items()},
        }
        batch.update({k: v.to(device) for k, v in stage.clip_inputs(clip, 0, idx)[0].items()})
        start = time.perf_counter()
        loss = adapt(stage, batch, 1, optimizer, params, grad_clip)[0]
        elapsed += time.perf_counter() - start
        curve["loss"].append(loss)
        if step in schedule:
            evaluate(step, elapsed)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", **{k: f"{v[-1]:.3f}" for k, v in curve["metrics"].items()})
    if bar is not None:
        bar.close()
    if write_checkpoint:
        curve["checkpoint"] = str(save_stage_checkpoint(stage, out_dir / "personalized.ckpt", personalization={
            "video": str(video), "seconds": seconds, "steps": steps}))
    (out_dir / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    curve["plot"] = str(plot_curve(curve, out_dir / "curve.png"))
    return curve


def plot_curve(curve: dict, path: str | Path, label: str = "") -> Path:
    """One column per metric: against steps (top) and against training seconds (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curve["metrics"])
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5.5), squeeze=False)
    for j, name in enumerate(names):
        for i, key in enumerate(("steps", "train_seconds")):
            ax = axes[i][j]
            ax.plot(curve[key], curve["metrics"][name], marker="o", label=label or None)
            ax.set_xlabel("steps" if key == "steps" else "training seconds")
            ax.set_title(name)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
