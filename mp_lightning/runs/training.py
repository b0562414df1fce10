"""Build the pieces of a run from a validated experiment config and run it.

`mp-lightning train/eval/quickstart`, sweeps and ablations all go through `run_training` and
`run_evaluation`, so every stage and baseline is launched, logged and checkpointed the same way.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from mp_lightning.config.compose import parse_overrides
from mp_lightning.errors import ConfigError

CHECKPOINT_DIR = "checkpoints"
WANDB_ID_FILE = "wandb_id.txt"


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.run_dir)


def is_rank_zero() -> bool:
    # before the Trainer exists, the launcher's environment says which process this is
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0 and int(
        os.environ.get("NODE_RANK", "0")
    ) == 0


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create the run directory, save the resolved config there, and keep W&B's files inside it."""
    run_dir = run_dir_of(cfg)
    (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    if is_rank_zero():
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    wandb_dir = (run_dir / "wandb_cache").resolve()
    # wandb otherwise writes into ~/.cache/wandb and ~/.local/share/wandb even when offline
    os.environ.setdefault("WANDB_DIR", str(run_dir.resolve()))
    os.environ["WANDB_DIR"] = str(run_dir.resolve())
    os.environ["WANDB_CACHE_DIR"] = str(wandb_dir / "cache")
    os.environ["WANDB_CONFIG_DIR"] = str(wandb_dir / "config")
    os.environ["WANDB_DATA_DIR"] = str(wandb_dir / "data")
    os.environ.setdefault("WANDB_SILENT", "true")
    return run_dir


def data_config_object(cfg: DictConfig):
    return OmegaConf.to_object(cfg.data)


def build_datamodule(cfg: DictConfig, run_dir: Path | None = None, **overrides: Any):
    from datamodules import VoxCelebDataModule

    data_cfg = data_config_object(cfg)
    for key, value in overrides.items():
        setattr(data_cfg, key, value)
    return VoxCelebDataModule(data_cfg, report_dir=str(run_dir) if run_dir else None)


def build_stage(cfg: DictConfig, datamodule=None):
    from mp_lightning.stages import stage_class

    spec = getattr(datamodule, "landmark_spec_dict", None) if datamodule is not None else None
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return stage_class(cfg.stage)(config=container, landmark_spec=spec)


def connect_stage_and_data(stage, datamodule) -> None:
    """Hand the stage's per-sample transform (if any) to the DataModule, so that what the stage derives
    from each sample (MetaPortrait's landmark lines and masks) is made in the DataLoader workers and
    not on the main process inside `training_step`."""
    setter = getattr(datamodule, "set_sample_transform", None)
    transform = stage.sample_transform() if hasattr(stage, "sample_transform") else None
    if setter is not None:
        setter(transform)


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id saved beside the checkpoints, so a resumed run continues the same W&B run."""
    path = run_dir / CHECKPOINT_DIR / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    if is_rank_zero():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id


LOGGERS = ("wandb", "tensorboard", "csv", "none")


def build_logger(cfg: DictConfig, run_dir: Path) -> list | bool:
    """The run's Lightning loggers (the configured one, then the local CSV copy), or False for none."""
    from lightning.pytorch.loggers import CSVLogger

    kind = cfg.logger.type
    if kind not in LOGGERS:
        raise ConfigError(f"config key 'logger.type': unknown logger '{kind}' ({' | '.join(LOGGERS)})")
    if kind == "none":
        return False
    csv = CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if kind == "csv":
        return [csv]
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        try:
            import tensorboard  # noqa: F401
        except ImportError as err:
            raise ConfigError("logger.type=tensorboard needs the `tensorboard` package (pip install tensorboard)") from err
        primary = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    else:
        from lightning.pytorch.loggers import WandbLogger

        finish_wandb_run(leftover_before=cfg.name)
        primary = WandbLogger(
            name=cfg.name,
            save_dir=str(run_dir),
            id=wandb_run_id(run_dir),
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            tags=list(cfg.logger.tags),
            offline=cfg.logger.mode == "offline",
            mode=str(cfg.logger.mode),
            log_model=cfg.logger.log_model,
        )
    return [primary, csv] if cfg.logger.local_csv else [primary]


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    ck = cfg.callbacks.checkpoint
    if ck.monitor and not cfg.callbacks.metrics:
        raise ConfigError(f"callbacks.checkpoint.monitor={ck.monitor} needs callbacks.metrics=true: the metrics "
                          f"callback logs every val/ and test/ metric")
    callbacks: list = [
        ModelCheckpoint(
            dirpath=str(run_dir / CHECKPOINT_DIR),
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            save_last=ck.save_last,
            save_top_k=ck.save_top_k if ck.monitor else 1,
            monitor=ck.monitor,
            mode=ck.mode,
            every_n_train_steps=ck.every_n_train_steps,
            every_n_epochs=ck.every_n_epochs if not ck.every_n_train_steps else None,
        )
    ]
    if cfg.trainer.enable_progress_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.callbacks.progress_bar_refresh_rate)))
    if cfg.callbacks.lr_monitor and cfg.logger.type != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.callbacks.metrics:
        from callbacks.evaluation import MetricsCallback

        callbacks.append(MetricsCallback(OmegaConf.to_object(cfg.metrics)))
    if cfg.callbacks.media.enabled and cfg.logger.type != "none":
        from callbacks.media import MediaCallback

        callbacks.append(MediaCallback(**OmegaConf.to_container(cfg.callbacks.media)))
    return callbacks


# the trainer settings that a test-only run (`run_evaluation`) takes; the others only shape training
EVALUATION_TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "limit_test_batches",
                           "enable_progress_bar")


def build_trainer(cfg: DictConfig, run_dir: Path, logger=None, callbacks=None, keys=None):
    """The Lightning Trainer of `cfg.trainer` (all of it, or only `keys`)."""
    import lightning as L

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if keys is not None:
        kwargs = {k: kwargs[k] for k in keys}
    kwargs["precision"] = resolve_precision(kwargs["precision"], kwargs["accelerator"])
    return L.Trainer(
        default_root_dir=str(run_dir),
        logger=logger if logger is not None else False,
        callbacks=callbacks or [],
        **kwargs,
    )


def resolve_precision(precision: str, accelerator: str) -> str:
    """`mixed` is bf16-mixed on GPUs that compute in bf16 (Ampere and later), else 16-mixed on GPUs, and
    32-true without a GPU; any Lightning precision passes through unchanged."""
    if str(precision) != "mixed":
        return precision
    import torch

    if accelerator == "cpu" or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        last = run_dir / CHECKPOINT_DIR / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(cfg.resume).is_file():
        raise ConfigError(f"config key 'resume': checkpoint not found: {cfg.resume}")
    return cfg.resume


def run_training(cfg: DictConfig) -> dict:
    """Train `cfg.stage` on `cfg.data`; resumes from the run's last checkpoint when there is one."""
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = prepare_run_dir(cfg)
    datamodule = build_datamodule(cfg, run_dir)
    stage = build_stage(cfg, datamodule)
    connect_stage_and_data(stage, datamodule)
    logger = build_logger(cfg, run_dir)
    try:
        if logger:
            _log_hyperparameters(logger, cfg, stage)
        trainer = build_trainer(cfg, run_dir, logger, build_callbacks(cfg, run_dir))
        ckpt = resume_checkpoint(cfg, run_dir)
        if ckpt and trainer.is_global_zero:
            print(f"resuming from {ckpt}")
        trainer.fit(stage, datamodule=datamodule, ckpt_path=ckpt)
        result = {
            "run_dir": str(run_dir),
            "last_checkpoint": str(run_dir / CHECKPOINT_DIR / "last.ckpt"),
            "global_step": trainer.global_step,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
        }
        if trainer.is_global_zero:
            (run_dir / "train_summary.json").write_text(json.dumps(result, indent=2))
    finally:
        finish_wandb_run(logger)
    return result


def _log_hyperparameters(loggers, cfg: DictConfig, stage) -> None:
    params = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in stage.named_children()
        if any(True for _ in module.parameters())
    }
    hp = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    hp["parameter_counts"] = params
    for logger in loggers:
        logger.log_hyperparams(hp)


def finish_wandb_run(loggers=None, leftover_before: str | None = None) -> None:
    """Finish the W&B run open in this process, if any.

    `loggers`: a run's loggers, in `finally` after the run (one crashed run must not poison the next one of a
    sweep or an ablation, which share the process): finished only if one of them logs to W&B.
    `leftover_before=<run name>`: before a run builds its W&B logger; a run still open then was left by
    someone else, and Lightning's WandbLogger would log into it, so it is finished with a warning.
    """
    import sys

    from callbacks.media import wandb_logger

    wandb = sys.modules.get("wandb")  # never imported: no run can be open
    if wandb is None or wandb.run is None or (leftover_before is None and wandb_logger(loggers) is None):
        return
    if leftover_before is not None:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"a W&B run ({wandb.run.id}) was still open in this process; it is finished so that run "
                       f"'{leftover_before}' logs into a run of its own")
    wandb.finish()


class EvaluationSets:
    """The test split seen twice: self-reenactment pairs and cross-identity pairs, as two dataloaders."""

    test_set_names = ("self", "cross")

    def __init__(self, cfg: DictConfig, report_dir: Path | None, sets=("self", "cross")):
        self.modules = {}
        for name in sets:
            mode = "pairs" if name == "self" else "cross_identity"
            self.modules[name] = build_datamodule(cfg, report_dir, mode=mode)
        self.test_set_names = tuple(sets)

    @property
    def landmark_spec_dict(self):
        return next(iter(self.modules.values())).landmark_spec_dict

    def dataloaders(self):
        loaders = []
        for dm in self.modules.values():
            dm.setup("test")
            loaders.append(dm.test_dataloader())
        return loaders


def run_evaluation(cfg: DictConfig, sets=("self", "cross"), model_overrides: Sequence[str] = ()) -> dict:
    """Test `cfg.ckpt_path` on the test split (self-reenactment and cross-identity); writes metrics.json.

    The model is the checkpoint's, built from the config saved in it (not `cfg.model`); `model_overrides`
    (`model.key=value`, as given on the command line) are set over that config and recorded in metrics.json."""
    import lightning as L

    from callbacks.evaluation import MetricsCallback
    from callbacks.media import wandb_logger
    from mp_lightning.stages.base import load_stage

    if not cfg.ckpt_path:
        raise ConfigError("`mp-lightning eval` needs ckpt_path=PATH.ckpt")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = prepare_run_dir(cfg)
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    model_overrides = list(model_overrides)
    stage = load_stage(cfg.ckpt_path, model_overrides=parse_overrides(model_overrides).get("model"))
    data = EvaluationSets(cfg, eval_dir, sets)
    for module in data.modules.values():
        connect_stage_and_data(stage, module)
    metrics_cb = MetricsCallback(OmegaConf.to_object(cfg.metrics))
    logger = build_logger(cfg, run_dir)
    try:
        trainer = build_trainer(cfg, run_dir, logger, [metrics_cb], keys=EVALUATION_TRAINER_KEYS)
        metrics_cb.set_names = {"test": data.test_set_names}
        trainer.test(stage, dataloaders=data.dataloaders())
        results = dict(sorted(metrics_cb.last_results.items()))
        # a model driven by motion descriptors says which extractor's (results of different kinds are not comparable)
        descriptor = getattr(stage.hp, "descriptor", None)
        if trainer.is_global_zero:
            summary = {"checkpoint": str(cfg.ckpt_path), "stage": stage.hparams["config"]["stage"],
                       "metrics": results, "cross_identity_protocol": stage.cross_identity_protocol,
                       "skipped": dict(metrics_cb.skipped), "model_overrides": model_overrides}
            if descriptor:
                summary["descriptor"] = descriptor
            (eval_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
            (eval_dir / "metrics.md").write_text(metrics_markdown(results, title=cfg.name, skipped=metrics_cb.skipped))
            if wandb_logger(logger) is not None:
                import wandb

                wandb_logger(logger).experiment.log({"test/metrics_table": wandb.Table(
                    columns=["metric", "value"], data=[[k, v] for k, v in results.items()])})
    finally:
        finish_wandb_run(logger)
    return {"eval_dir": str(eval_dir), "metrics": results, "stage": stage,
            "cross_identity_protocol": stage.cross_identity_protocol, "descriptor": descriptor,
            "skipped": dict(metrics_cb.skipped)}


def metrics_markdown(results: dict, title: str = "", skipped: dict | None = None) -> str:
    """Metrics as a markdown table: one row per metric, a column per evaluation set, and the network each
    number comes from; then the metrics that were skipped and why."""
    from mp_lightning.metrics.suite import METRIC_NETWORKS

    rows: dict[str, dict[str, float]] = {}
    sets: list[str] = []
    for key, value in results.items():
        parts = key.split("/")
        set_name = parts[1] if len(parts) == 3 else "self"
        if set_name not in sets:
            sets.append(set_name)
        rows.setdefault(parts[-1], {})[set_name] = value
    lines = [f"# {title}" if title else "", "", "| metric | " + " | ".join(sets) + " | network |",
             "|---|" + "---|" * len(sets) + "---|"]
    for metric, vals in rows.items():
        lines.append(f"| {metric} | " + " | ".join(f"{vals[s]:.4f}" if s in vals else "" for s in sets)
                     + f" | {METRIC_NETWORKS.get(metric, '')} |")
    if skipped:
        lines += ["", "Skipped:", *[f"- {name}: {reason}" for name, reason in sorted(skipped.items())]]
    return "\n".join(lines).lstrip() + "\n"
