"""What every stage shares: its config, checkpoint loading, and the forward/validation contract.

A stage's `forward(batch)` takes the DataModule's batch dict and returns a dict with at least
`prediction` (B, 3, H, W) in [0, 1]. Validation and test steps return that dict (detached) so that the
metric and media callbacks can use it for any stage or baseline.
"""
from __future__ import annotations

from collections import defaultdict
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from mp_lightning.errors import CheckpointError, ConfigError
from mp_lightning.state_dicts import load_matching, load_strict, read_checkpoint, read_state_dict


class NonFiniteGrads(str, Enum):
    """What an optimizer step does when a gradient holds NaN/inf (after AMP unscaling). Either way it is counted
    and logged as `train/skipped_steps` / `train/nonfinite_grads`."""

    skip = "skip"  # the step is skipped (under 16-mixed the GradScaler skips it and lowers its scale)
    nan_to_num = "nan_to_num"  # the released MetaPortrait code (fp32): NaN -> 0, +-inf -> +-optim.nan_to_num, then clip


class Stage(L.LightningModule):
    """A training stage. Gradient hygiene is shared: before every optimizer step (after AMP unscaling) the
    gradients of each `clip_group` of the optimizer's param groups are norm-clipped to `model.optim.grad_clip`
    and a non-finite gradient is handled by `model.optim.nonfinite_grads`, counted and logged."""

    Config: type = None  # the dataclass that types this stage's `model:` section

    @classmethod
    def model_schema(cls, raw_model: DictConfig | None = None) -> DictConfig:
        return OmegaConf.structured(cls.Config)

    @classmethod
    def typed_model_config(cls, model: dict) -> Any:
        """The `model:` section as a dataclass instance (defaults filled in)."""
        return OmegaConf.to_object(OmegaConf.merge(cls.model_schema(OmegaConf.create(model)), model))

    def __init__(self, config: dict, landmark_spec: dict | None = None):
        super().__init__()
        # the whole experiment goes into the checkpoint, so `load_stage` can rebuild any stage
        config = _plain(config)  # weights-only checkpoint loading accepts plain values only (no Enum members)
        self.save_hyperparameters({"config": config, "landmark_spec": landmark_spec})
        self.experiment_config = config
        self.hp = self.typed_model_config(config.get("model") or {})
        self.nonfinite_steps = 0  # optimizer steps whose gradients held NaN/inf (kept in checkpoints)
        self.skipped_steps = 0  # ... of which were skipped
        self.last_grad_norms: dict[str, torch.Tensor] = {}

    # --- contract -----------------------------------------------------------------------------
    #: the unit of the LR schedule: "epoch" (stepped here at each epoch's end) or "step" (the stage steps
    #: its schedulers in `training_step`). Manual optimization: Lightning steps no scheduler itself.
    lr_interval: str = "epoch"

    def on_train_epoch_end(self) -> None:
        if self.lr_interval != "epoch":
            return
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else [scheds] if scheds is not None else []:
            sched.step()

    def forward(self, batch: dict) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        # scored by the MetricsCallback (callbacks/evaluation.py), the one place that logs val/ and test/ metrics
        return detached(self(batch))

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return detached(self(batch))

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return detached(self(batch))

    def sample_transform(self):
        """What this stage derives from each data sample, to run in the DataLoader workers, or None.

        A picklable callable `item -> item` over one sample dict of the DataModule (no batch axis);
        `mp_lightning.runs.training.connect_stage_and_data` hands it to the DataModule, so work such as
        landmark drawing happens in the workers instead of on the main process inside `training_step`.
        The stage must still accept batches without those keys (it derives them itself then).
        """
        return None

    @property
    def cross_identity_protocol(self) -> str:
        """How this stage is driven by another person's frame (recorded beside cross-identity results);
        a cross-identity batch also carries the driving clip's first frame (`driving_initial`)."""
        return "driving frame as given (absolute)"

    #: batch keys of a media clip (`VoxCelebDataModule.media_clip`) that `animate` takes as arguments
    animation_keys: tuple[str, ...] = ()

    def animation_inputs(self, source=None, driving=None, source_frame: int = 0, **files) -> dict:
        """Extra `animate` arguments this stage reads from files beside the source and the driving clip, or from
        the files given (e.g. PIRender's `driving_semantics=FILE`); none by default."""
        return {}

    def clip_inputs(self, clip: dict, source_index: int, driving_indices) -> tuple[dict, dict]:
        """What this stage derives from a loaded clip beyond frames and landmarks, for `personalize`: (extra keys
        of a pairs batch source_index -> driving_indices, extra `animate` arguments for those frames)."""
        return {}, {}

    def source_inputs(self) -> tuple[str, ...]:
        """Per-source batch keys this stage needs beyond the image and its landmarks (e.g. a precomputed
        `source_identity`): `preprocess.inputs.load_source_inputs` finds them for animate, personalize, compare."""
        return ()

    def animate(self, source, driving, driving_landmarks=None, source_landmarks=None, relative: bool | None = None,
                **kwargs) -> torch.Tensor:
        """(T, 3, H, W) predictions in [0, 1] for one source and a driving sequence (see `animate_with_pairs`).

        `relative`: move the source by the driving motion relative to the first driving frame instead of
        copying the driving pose (None: the stage's default). Stages without a relative mode ignore it.
        """
        return animate_with_pairs(self, source, driving, driving_landmarks, source_landmarks, **kwargs)

    # --- adaptation: meta-learning (Reptile's inner loop) and personalization ------------------------
    def adaptation_param_groups(self, warp_lr_multiplier: float) -> list[dict]:
        """The parameters meta-learning and personalization train, as groups `{"params", "mult", "name"}`
        whose lr is the inner lr x `mult`; `warp_lr_multiplier` balances a warping network against the
        rest (official inner_warplr_tune). Discriminators, embedders and loss networks are never in them."""
        raise ConfigError(f"stage '{self.experiment_config.get('stage')}' ({type(self).__name__}) names no "
                          f"parameters to adapt: it cannot be meta-learned or personalized")

    def adaptation_loss(self, batch: dict) -> torch.Tensor:
        """The stage's own training loss on a pairs batch, without any GAN term (the official meta config)."""
        raise ConfigError(f"stage '{self.experiment_config.get('stage')}' ({type(self).__name__}) has no "
                          f"adaptation loss: it cannot be meta-learned or personalized")

    def unwrapped(self) -> "Stage":
        """The stage that animates and is personalized: itself, or the stage a wrapper (meta-learning) trains."""
        return self

    # --- gradient hygiene -----------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this after the GradScaler has unscaled the gradients and before `optimizer.step`,
        # for manual optimization too: clipping sees true gradients and the scaler still sees the overflow
        optim = getattr(self.hp, "optim", None)
        if optim is None:
            return
        clip = float(getattr(optim, "grad_clip", 0.0) or 0.0)
        groups: dict[str, list[torch.Tensor]] = defaultdict(list)
        for group in optimizer.param_groups:
            groups[group.get("clip_group", "all")] += [p for p in group["params"] if p.grad is not None]
        norms = {name: clip_grad_norm(params, clip) for name, params in groups.items() if params}
        self.last_grad_norms = norms  # per clip group, before clipping
        if not norms:
            return
        # one host sync per step, as the GradScaler's own inf check makes
        if bool(torch.stack(list(norms.values())).isfinite().all()):
            return
        self.nonfinite_steps += 1
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        mode = NonFiniteGrads(getattr(optim, "nonfinite_grads", NonFiniteGrads.skip))
        if scaler is None and mode is NonFiniteGrads.nan_to_num:
            limit = float(getattr(optim, "nan_to_num", 1e5))
            for params in groups.values():
                for p in params:
                    torch.nan_to_num_(p.grad, nan=0.0, posinf=limit, neginf=-limit)
                clip_grad_norm(params, clip)
            return
        self.skipped_steps += 1
        if scaler is None:
            for params in groups.values():
                for p in params:
                    p.grad = None  # Adam and SGD leave a parameter without gradient untouched: the step is skipped

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("train/skipped_steps", float(self.skipped_steps))
        self.log("train/nonfinite_grads", float(self.nonfinite_steps))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mp_lightning_counters"] = {"nonfinite_steps": self.nonfinite_steps,
                                               "skipped_steps": self.skipped_steps}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        counters = checkpoint.get("mp_lightning_counters") or {}
        self.nonfinite_steps = int(counters.get("nonfinite_steps", 0))
        self.skipped_steps = int(counters.get("skipped_steps", 0))

    # --- helpers ------------------------------------------------------------------------------
    def log_losses(self, losses: dict[str, torch.Tensor], prefix: str = "train", batch_size: int | None = None):
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value.detach(), prog_bar=name == "loss", batch_size=batch_size)


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def clip_grad_norm(grads_of: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Total 2-norm of the gradients of `grads_of` (parameters); scales them to `max_norm` when above it (> 0).
    Non-finite norms are returned, never applied."""
    grads = [p.grad for p in grads_of]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach(), 2.0) for g in grads]), 2.0)
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        coef = torch.where(norm.isfinite(), coef, torch.ones_like(coef))
        torch._foreach_mul_(grads, coef)
    return norm


def call_frozen(module: torch.nn.Module, *args, **kwargs):
    """`module(*args, **kwargs)` with its parameters detached: gradients reach the inputs, never the module.

    A generator's adversarial term goes through the discriminator this way, so that one backward of
    generator + discriminator losses gives each network exactly its own gradient (one backward per step
    is what DDP expects). Buffers (spectral-norm vectors, BN statistics) are the module's own.
    """
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, args, kwargs, strict=False)


def trainable(*modules_or_params) -> list[torch.nn.Parameter]:
    """The parameters that require gradients, in order, from modules and/or parameter lists."""
    out = []
    for item in modules_or_params:
        params = item.parameters() if isinstance(item, torch.nn.Module) else item
        out += [p for p in params if p.requires_grad]
    return out


def detached(value):
    """`value` (a tensor, or dicts/lists of them, e.g. a stage's or a discriminator's output) without its graph."""
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [detached(v) for v in value]
    return value.detach() if torch.is_tensor(value) else value


def load_stage(path: str | Path, map_location: str | torch.device = "cpu", eval_mode: bool = True,
               model_overrides: Mapping[str, Any] | None = None) -> Stage:
    """The LightningModule stored in one of our checkpoints, rebuilt from its saved config.

    `model_overrides`: model config keys (nested, as under `model:`) set over the checkpoint's, e.g. an
    inference option such as `{"retarget_landmarks": False}`; one that changes a weight's shape fails in the
    strict load, naming the weight."""
    from mp_lightning.stages import stage_class

    ckpt = read_checkpoint(path, weights_only=False, map_location=map_location)
    hp = ckpt.get("hyper_parameters") or {}
    if "config" not in hp:
        raise CheckpointError(
            f"{path} is not an mp-lightning checkpoint (no saved experiment config); "
            f"official checkpoints are converted with `mp-lightning import-checkpoint`"
        )
    config = dict(hp["config"])
    if model_overrides:
        config["model"] = OmegaConf.to_container(OmegaConf.merge(config.get("model") or {}, model_overrides))
    cls = stage_class(config["stage"])
    # the checkpoint already holds what the init files gave at the start of training: building with them
    # would re-read files that may since have moved (and be overwritten by the state dict anyway)
    module = cls(config=without_init_files(config), landmark_spec=hp.get("landmark_spec"))
    module.hparams["config"] = module.experiment_config = config  # provenance kept for the next save
    load_strict(module, ckpt["state_dict"], source=str(path))
    module.to(map_location)
    return module.eval() if eval_mode else module


#: model config keys that only say where training started (read once, in `__init__`)
INIT_ONLY_KEYS = frozenset({"init_from", "init_gfpgan"})


def without_init_files(config: dict) -> dict:
    """A copy of an experiment config with every init-only key (at any depth of `model`) set to None."""
    def strip(node):
        if isinstance(node, dict):
            return {k: None if k in INIT_ONLY_KEYS else strip(v) for k, v in node.items()}
        return node

    config = dict(config)
    config["model"] = strip(config.get("model") or {})
    return config


def save_stage_checkpoint(module: Stage, path: str | Path, **extra: Any) -> Path:
    """A weights-and-config checkpoint that `load_stage` and `model.init_from` read (no optimizer state)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__,
            "epoch": 0,
            "global_step": 0,
            "mp_lightning": extra,
        },
        path,
    )
    return path


def load_init_weights(module: torch.nn.Module, path: str | Path, prefixes: tuple[str, ...] = ()) -> list[str]:
    """Copy the weights of `path` (any mp-lightning checkpoint) whose names start with `prefixes` into `module`.

    Stage 2 starts from a stage-1 checkpoint this way (`model.init_from=...`): only the warping
    network's keys are taken, as the official code copies only `ladder_network` / `dense_motion_network`.
    Returns the keys that were loaded.
    """
    state = read_state_dict(path, weights_only=False)
    return sorted(load_matching(module, state, f"model.init_from={path}", prefixes).loaded)


def animate_with_pairs(stage: Stage, source: torch.Tensor, driving: torch.Tensor,
                       driving_landmarks: torch.Tensor | None = None, source_landmarks: torch.Tensor | None = None,
                       batch_size: int = 8, progress: bool = False, extra: dict | None = None) -> torch.Tensor:
    """Animate one source with a driving sequence by running `stage(batch)` on (source, frame t) pairs.

    source (3, H, W) or (1, 3, H, W) in [0, 1]; driving (T, 3, H, W) in [0, 1]; landmarks (T, K, 2) /
    (K, 2) in [0, 1]. Returns predictions (T, 3, H, W) in [0, 1].
    """
    device = stage.device
    source = source.reshape(1, *source.shape[-3:]).to(device)
    if source_landmarks is not None:
        source_landmarks = source_landmarks.reshape(1, *source_landmarks.shape[-2:]).to(device)
    frames = []
    steps = range(0, driving.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="animate", unit="batch")
    for start in steps:
        drv = driving[start:start + batch_size].to(device)
        n = drv.shape[0]
        batch = {"source": source.expand(n, -1, -1, -1), "driving": drv}
        if source_landmarks is not None:
            batch["source_landmarks"] = source_landmarks.expand(n, -1, -1)
        if driving_landmarks is not None:
            batch["driving_landmarks"] = driving_landmarks[start:start + n].to(device)
        for key, value in (extra or {}).items():
            batch[key] = value.to(device).expand(n, *value.shape[1:]) if torch.is_tensor(value) else value
        with torch.no_grad():
            frames.append(stage(batch)["prediction"].clamp(0, 1).cpu())
    return torch.cat(frames)
