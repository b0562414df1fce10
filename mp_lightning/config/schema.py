"""Typed schemas of an experiment. The `model:` section is typed by the chosen stage's own `Config`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from mp_lightning.choices import Choice


class LoggerType(Choice):
    wandb = "wandb"
    tensorboard = "tensorboard"
    csv = "csv"
    none = "none"


class WandbMode(Choice):
    offline = "offline"  # no account; `wandb sync` later
    online = "online"
    disabled = "disabled"


@dataclass
class TrainerConfig:
    """Passed to `lightning.Trainer` as keyword arguments (same names, same meaning)."""

    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = "auto"  # int, list of ids or "auto"; per node
    num_nodes: int = 1  # multi-node DDP (torchrun --nnodes / SLURM --nodes)
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ... (every stage trains under plain ddp)
    precision: str = "32-true"  # 32-true | 16-mixed | bf16-mixed | mixed (bf16 where the GPU has it, else 16)
    max_steps: int = -1  # optimizer steps; -1 means limited by max_epochs
    max_epochs: Optional[int] = None
    max_time: Optional[str] = None  # "DD:HH:MM:SS"; stops cleanly, resumable
    fast_dev_run: Any = False  # bool or number of batches: one quick pass of train/val/test
    limit_train_batches: Any = 1.0  # fraction or number of batches
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    overfit_batches: Any = 0.0  # fraction or number of batches reused every epoch
    val_check_interval: Any = 1.0
    check_val_every_n_epoch: Optional[int] = 1
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None  # automatic-optimization stages only; GAN stages clip themselves
    sync_batchnorm: bool = False  # torch's SyncBatchNorm (GPUs only); FOMM syncs its own (model.sync_batchnorm)
    deterministic: Any = False
    benchmark: Optional[bool] = None  # cudnn.benchmark
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    type: LoggerType = LoggerType.wandb  # wandb | tensorboard | csv | none
    # also write csv/metrics.csv beside a wandb or tensorboard logger: `mp-lightning report` reads it, so an
    # air-gapped run can be looked at without a W&B account or `wandb sync`
    local_csv: bool = True
    project: str = "mp-lightning"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline  # offline (no account; `wandb sync` later) | online | disabled
    group: Optional[str] = None  # e.g. the sweep or ablation set a run belongs to
    tags: List[str] = field(default_factory=list)
    log_model: bool = False  # upload checkpoints as W&B artifacts (online mode)


@dataclass
class CheckpointConfig:
    every_n_train_steps: Optional[int] = None  # also checkpoint mid-epoch, for long epochs
    every_n_epochs: Optional[int] = 1
    save_last: bool = True  # always keep checkpoints/last.ckpt for resuming
    save_top_k: int = 1
    monitor: Optional[str] = None  # e.g. val/lpips; None keeps the latest
    mode: str = "min"


@dataclass
class MediaConfig:
    enabled: bool = True
    every_n_epochs: int = 1
    num_samples: int = 4  # rows of the logged image grid
    video_frames: int = 16  # frames of the logged mp4 clip (0 disables video)
    fps: int = 10


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    metrics: bool = True  # run the metric suite on validation and test
    lr_monitor: bool = True
    # steps between progress-bar updates (trainer.enable_progress_bar): each update reads the logged losses
    # back from the GPU, a host sync that keeps the CPU from queueing the next step; 1 = every step
    progress_bar_refresh_rate: int = 10


@dataclass
class ExperimentConfig:
    name: str = MISSING  # run name; the run directory is output_root/name
    stage: str = MISSING  # warp | refine | sr | fomm | meta ... (mp_lightning.stages.STAGES)
    seed: int = 0
    output_root: str = "runs"
    run_dir: str = "${output_root}/${name}"
    resume: str = "auto"  # auto: continue from run_dir/checkpoints/last.ckpt if present | never | PATH.ckpt
    ckpt_path: Optional[str] = None  # checkpoint to evaluate (`mp-lightning eval`)
    description: str = ""
    model: Any = None  # typed by the stage's Config dataclass
    data: Any = None  # typed by datamodules.config.DataConfig
    metrics: Any = None  # typed by mp_lightning.metrics.suite.MetricsConfig
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
