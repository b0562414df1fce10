"""Fast personalization: fine-tune a checkpoint on the first seconds of one person's clip.

The stage's own loss (no GAN term, as in the meta-learning inner loop) is minimised on pairs
(first frame -> a frame of the first `seconds`), and the model is evaluated on the remaining frames
of the clip at a schedule of step counts (0, 1, 2, 5, 10, 20, 50, ... and the last step): LPIPS,
identity similarity (prediction vs source), PSNR, SSIM and L1. Writes the personalized checkpoint,
`curve.json` and `curve.png` (metrics against steps and against training seconds).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mp_lightning.errors import ConfigError, DataError
from mp_lightning.io.video import read_video, video_fps
from mp_lightning.reptile import adapt, adaptation_groups
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


#: what personalization scores: held-out frames against the real ones, and the source's identity kept
EVALUATION_METRICS = ("lpips", "st_lpips", "psnr", "ssim", "l1", "id_similarity", "id_similarity_dlib")


class Evaluator:
    """Metrics of a stage's predictions on held-out frames (source = first frame), computed by the `MetricSuite`
    that training logs with: the same keys (`lpips_random` / `id_similarity_random` where the network is random,
    never the published name), and a metric whose weights or package are missing is left out with its reason
    in `skipped`. Identity metrics compare the prediction with the source."""

    def __init__(self, lpips_pretrained: bool = True, identity_pretrained: bool = True, identity: bool = True,
                 names: tuple = EVALUATION_METRICS):
        from mp_lightning.metrics.suite import MetricSuite

        enabled = [n for n in names if identity or not n.startswith(("id_similarity", "aed"))]
        self.suite = MetricSuite({"enabled": enabled, "lpips": {"pretrained": lpips_pretrained},
                                  "identity": {"pretrained": identity_pretrained}, "fid": False},
                                 reference_available=True)

    @property
    def skipped(self) -> dict:
        """{metric: why it is not scored}: at construction (weights, packages) and at compute time."""
        return self.suite.skipped

    def higher_is_better(self, key: str) -> bool:
        return bool(self.suite.metrics[key].higher_is_better)

    def __call__(self, stage, source, source_lm, frames, landmarks, batch_size: int = 8, extra: dict | None = None,
                 **animate_inputs) -> dict:
        """`extra`: per-source batch entries (a precomputed identity); `animate_inputs`: a stage's own animate
        arguments for these frames (PIRender's descriptor windows)."""
        was_training = stage.training
        stage.eval()
        preds = stage.animate(source, frames, landmarks, source_lm, batch_size=batch_size,
                              **({"extra": extra} if extra else {}), **animate_inputs)
        stage.train(was_training)
        self.suite.to(preds.device)
        self.suite.reset()
        self.suite.update({"prediction": preds}, {"driving": frames.to(preds.device),
                                                  "source": source.to(preds.device).unsqueeze(0).expand_as(preds)})
        values = self.suite.compute()
        # every metric at every call, NaN where it had nothing to score (dlib found no face in the source):
        # curves stay aligned and summaries average over the identities that have a value
        return {key: values.get(key, math.nan) for key in self.suite.metrics}


@dataclass
class PersonalizationSettings:
    """What `mp-lightning personalize` and the personalization benchmark share besides the recipe: each field is
    a flag of the one (`mp_lightning.commands.flags`) and a key=value of the other (`BenchmarkConfig`)."""

    max_eval_frames: int = field(default=32, metadata={
        "help": "held-out frames evaluated, evenly spaced (the benchmark: per identity, over its evaluation clips)"})
    lpips_pretrained: bool = field(default=True, metadata={
        "help": "false: random LPIPS trunk (offline smoke runs only; then not LPIPS)"})
    identity_pretrained: bool = field(default=True, metadata={
        "help": "false: random face embedder (offline smoke runs only)"})
    seed: int = field(default=0, metadata={"help": "order of the support pairs"})
    device: str = field(default="auto", metadata={
        "help": "auto (cuda when available, else cpu), cpu, cuda, cuda:1, ... (the benchmark under DDP: each "
                "rank's own GPU)"})


OPTIMIZERS = ("adam", "radam", "sgd")


@dataclass
class PersonalizationRecipe:
    """How a checkpoint is fine-tuned on one person (`mp-lightning personalize`, the personalization benchmark).

    The stage's own loss (no GAN term), on pairs (source frame -> a support frame), `batch_size` pairs a step.
    """

    # Chosen with the personalization benchmark on a trained tiny warp stage (experiments/paper/
    # personalization_tiny_start.yaml, 150 steps on `synth --personal-details` data; 2 held-out identities,
    # 0.4 s support, batch 4), held-out L1 at steps 0/1/2/3/5/10:
    #   adam 1e-4: .0409 .0400 .0392 .0385 .0376 .0360    adam 2e-4: .0409 .0392 .0381 .0372 .0362 .0353
    #   adam 5e-4: .0409 .0379 .0367 .0360 .0362 .0353    adam 1e-3: .0409 .0400 .0382 .0369 .0390 .0359
    # 2e-4 (the official inner lr) is never worse than the step before in L1 or LPIPS and as good as 5e-4 at
    # step 10; larger rates go back up between steps. From a *random* init 2e-4 first loses 7-10% (step 1-2)
    # while 1e-4 does not (issue 14's recipe grid), but personalization starts from a trained model.
    # Reproduce: mp-lightning personalization-benchmark --checkpoint start=CKPT --data D --identities 2
    #   --support-seconds 0.4 --steps 0,1,2,3,5,10 --out O recipe.lr=LR max_eval_frames=8
    # Each field is also a flag of `mp-lightning personalize` (`mp_lightning.commands.flags`).
    optimizer: str = field(default="adam", metadata={"choices": OPTIMIZERS, "help": "fine-tuning optimizer"})
    lr: float = field(default=2e-4, metadata={"help": "learning rate"})
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999], metadata={"help": "adam / radam betas"})
    momentum: float = field(default=0.9, metadata={"help": "sgd momentum"})
    # official inner_warplr_tune
    warp_lr_multiplier: float = field(default=0.1, metadata={
        "help": "warping-network lr = lr x this (refine stage)"})
    grad_clip: float = field(default=0.3, metadata={"help": "gradient norm clip; 0 = off"})
    batch_size: int = field(default=4, metadata={"help": "pairs per step"})


def make_optimizer(groups: list[dict], recipe: PersonalizationRecipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over adaptation groups (each group's lr is recipe.lr x its `mult`)."""
    if recipe.optimizer not in OPTIMIZERS:
        raise ConfigError(f"personalization optimizer '{recipe.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    params = [{"params": g["params"], "lr": recipe.lr * g["mult"]} for g in groups]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum)
    cls = torch.optim.RAdam if recipe.optimizer == "radam" else torch.optim.Adam
    return cls(params, lr=recipe.lr, betas=tuple(recipe.betas))


def fine_tune_curve(stage, source: torch.Tensor, source_landmarks: torch.Tensor, support: torch.Tensor,
                    support_landmarks: torch.Tensor, schedule: list[int], recipe: PersonalizationRecipe,
                    evaluate: Callable[[], dict], seed: int = 0, on_step: Callable | None = None,
                    batch_inputs: Callable[[torch.Tensor], dict] | None = None) -> dict:
    """Fine-tune `stage` in place on (source -> support frame) pairs and evaluate at each step count of `schedule`.

    source (3, H, W), source_landmarks (K, 2); support (N, 3, H, W), support_landmarks (N, K, 2), all in [0, 1].
    `evaluate()` returns {metric: value} of the stage as it is (its time is not counted). Returns `steps`,
    `train_seconds` (cumulative optimizer time at each step count), `metrics` {name: [value per step count]}
    and `loss` (every step). `batch_inputs(support indices)` adds a stage's other keys to each step's batch
    (a precomputed source identity, PIRender's descriptor windows).
    """
    device = stage.device
    groups = adaptation_groups(stage, recipe.warp_lr_multiplier)
    params = [p for g in groups for p in g["params"]]
    optimizer = make_optimizer(groups, recipe)
    rng = np.random.default_rng(seed)
    n = support.shape[0]
    curve = {"steps": [], "train_seconds": [], "metrics": {}, "loss": []}

    def record(step: int, elapsed: float) -> None:
        values = evaluate()
        curve["steps"].append(step)
        curve["train_seconds"].append(elapsed)
        for k, v in values.items():
            curve["metrics"].setdefault(k, []).append(v)

    stage.train()
    elapsed = 0.0
    if 0 in schedule:
        record(0, 0.0)
    for step in range(1, max(schedule) + 1):
        idx = torch.as_tensor(rng.integers(0, n, size=recipe.batch_size))
        batch = {
            "source": source.unsqueeze(0).expand(recipe.batch_size, -1, -1, -1).to(device),
            "source_landmarks": source_landmarks.unsqueeze(0).expand(recipe.batch_size, -1, -1).to(device),
            "driving": support[idx].to(device), "driving_landmarks": support_landmarks[idx].to(device),
        }
        if batch_inputs is not None:
            batch.update({k: v.to(device) for k, v in batch_inputs(idx).items()})
        start = time.perf_counter()
        loss = adapt(stage, batch, 1, optimizer, params, recipe.grad_clip)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed += time.perf_counter() - start
        curve["loss"].append(loss)
        if step in schedule:
            record(step, elapsed)
        if on_step is not None:
            on_step(loss, curve)
    return curve


def personalize(stage, video: str | Path, seconds: float, steps: int, out_dir: str | Path,
                eval_every: Optional[int] = None, recipe: PersonalizationRecipe | None = None,
                max_eval_frames: int = 32, lpips_pretrained: bool = True, identity_pretrained: bool = True,
                identity: bool = True, progress: bool = True, seed: int = 0, write_checkpoint: bool = True,
                source_identity: str | Path | None = None) -> dict:
    """Fine-tune `stage` (in place) on the first `seconds` of `video`; returns the curve dict.

    `source_identity`: a precomputed identity (.npy) for checkpoints that condition on one (default: the
    clip's `.identity.npy` when the stage needs it).

    The schedule is `step_schedule(steps, eval_every)`; evaluation time is not counted in `seconds`.
    `recipe`: None = the defaults of `PersonalizationRecipe`.
    """
    recipe = recipe or PersonalizationRecipe()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = load_clip(video, _image_size(stage))
    frames, landmarks, fps = clip["frames"], clip["landmarks"], clip["fps"]
    n_train = int(round(seconds * fps))
    if n_train < 1 or n_train >= len(frames):
        raise DataError(f"--seconds {seconds} gives {n_train} training frames of {len(frames)} at {fps:g} fps; "
                        f"leave at least one frame for evaluation")
    held = torch.linspace(n_train, len(frames) - 1, min(max_eval_frames, len(frames) - n_train)).round().long().unique()
    source, source_lm = frames[0], landmarks[0]
    from mp_lightning.preprocess.inputs import load_source_inputs

    extra = load_source_inputs(stage, video, source_identity)  # e.g. the official weights' precomputed identity
    held_animate = stage.clip_inputs(clip, 0, held)[1]  # a stage's own inputs for the held-out frames

    def batch_inputs(idx: torch.Tensor) -> dict:
        per_source = {k: v.expand(len(idx), *v.shape[1:]) for k, v in extra.items()}
        return {**per_source, **stage.clip_inputs(clip, 0, idx)[0]}

    evaluator = Evaluator(lpips_pretrained, identity_pretrained, identity)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="personalize", unit="step")

    def on_step(loss: float, curve: dict) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", **{k: f"{v[-1]:.3f}" for k, v in curve["metrics"].items()})

    curve = fine_tune_curve(stage, source, source_lm, frames[:n_train], landmarks[:n_train],
                            step_schedule(steps, eval_every), recipe,
                            lambda: evaluator(stage, source, source_lm, frames[held], landmarks[held], extra=extra,
                                              **held_animate),
                            seed=seed, on_step=on_step, batch_inputs=batch_inputs)
    if bar is not None:
        bar.close()
    curve = {"video": str(video), "fps": fps, "seconds_of_video": seconds, "train_frames": n_train,
             "eval_frames": int(len(held)), "recipe": asdict(recipe), "skipped_metrics": evaluator.skipped, **curve}
    if write_checkpoint:
        curve["checkpoint"] = str(save_stage_checkpoint(stage, out_dir / "personalized.ckpt", personalization={
            "video": str(video), "seconds": seconds, "steps": steps, "recipe": asdict(recipe)}))
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
