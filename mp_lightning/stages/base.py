"""What every stage shares: its config, checkpoint loading, and the forward/validation contract.

A stage's `forward(batch)` takes the DataModule's batch dict and returns a dict with at least
`prediction` (B, 3, H, W) in [0, 1]. Validation and test steps return that dict (detached) so that the
metric and media callbacks can use it for any stage or baseline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from mp_lightning.errors import CheckpointError


class Stage(L.LightningModule):
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
        self.save_hyperparameters({"config": config, "landmark_spec": landmark_spec})
        self.experiment_config = config
        self.hp = self.typed_model_config(config.get("model") or {})

    # --- contract -----------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = self(batch)
        target = batch.get("driving")
        if target is not None and "prediction" in out and not batch.get("cross_identity", False):
            self.log("val/l1", (out["prediction"] - target).abs().mean(), prog_bar=True, sync_dist=True,
                     batch_size=target.shape[0], add_dataloader_idx=False)
        return _detach(out)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return _detach(self(batch))

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return _detach(self(batch))

    def sample_transform(self):
        """What this stage derives from each data sample, to run in the DataLoader workers, or None.

        A picklable callable `item -> item` over one sample dict of the DataModule (no batch axis);
        `mp_lightning.training.connect_stage_and_data` hands it to the DataModule, so work such as
        landmark drawing happens in the workers instead of on the main process inside `training_step`.
        The stage must still accept batches without those keys (it derives them itself then).
        """
        return None

    def animate(self, source, driving, driving_landmarks=None, source_landmarks=None, **kwargs) -> torch.Tensor:
        """(T, 3, H, W) predictions in [0, 1] for one source and a driving sequence (see `animate_with_pairs`)."""
        return animate_with_pairs(self, source, driving, driving_landmarks, source_landmarks, **kwargs)

    # --- helpers ------------------------------------------------------------------------------
    def log_losses(self, losses: dict[str, torch.Tensor], prefix: str = "train", batch_size: int | None = None):
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value.detach(), prog_bar=name == "loss", batch_size=batch_size)


def _detach(out: dict) -> dict:
    return {k: (v.detach() if torch.is_tensor(v) else v) for k, v in out.items()}


def load_stage(path: str | Path, map_location: str | torch.device = "cpu", eval_mode: bool = True) -> Stage:
    """The LightningModule stored in one of our checkpoints, rebuilt from its saved config."""
    from mp_lightning.stages import stage_class

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    hp = ckpt.get("hyper_parameters") or {}
    if "config" not in hp:
        raise CheckpointError(
            f"{path} is not an mp-lightning checkpoint (no saved experiment config); "
            f"official checkpoints are converted with `mp-lightning import-checkpoint`"
        )
    cls = stage_class(hp["config"]["stage"])
    module = cls(config=hp["config"], landmark_spec=hp.get("landmark_spec"))
    load_state_dict_checked(module, ckpt["state_dict"], source=str(path))
    module.to(map_location)
    return module.eval() if eval_mode else module


def load_state_dict_checked(module: torch.nn.Module, state: dict, source: str, strict: bool = True) -> None:
    """`load_state_dict` whose error names every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and torch.is_tensor(v) and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched[:10]))
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: " + ", ".join(missing[:10]))
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: " + ", ".join(unexpected[:10]))
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + " | ".join(problems))
    module.load_state_dict(state, strict=strict)


def save_stage_checkpoint(module: Stage, path: str | Path, **extra: Any) -> Path:
    """A weights-and-config checkpoint that `load_stage` and `model.init_from` read (no optimizer state)."""
    import lightning

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
            "epoch": 0,
            "global_step": 0,
            "mp_lightning": extra,
        },
        path,
    )
    return path


def load_init_weights(module: torch.nn.Module, path: str | Path, prefixes: tuple[str, ...] = (), strict: bool = False) -> list[str]:
    """Copy the weights of `path` (any mp-lightning checkpoint) whose names start with `prefixes` into `module`.

    Stage 2 starts from a stage-1 checkpoint this way (`model.init_from=...`): only the warping
    network's keys are taken, as the official code copies only `ladder_network` / `dense_motion_network`.
    Returns the keys that were loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.init_from: checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    own = module.state_dict()
    chosen = {k: v for k, v in state.items() if k in own and (not prefixes or k.startswith(prefixes))}
    if not chosen:
        raise CheckpointError(f"model.init_from: {path} has no weights for {prefixes or 'this stage'}")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in chosen.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"model.init_from: {path} has shapes that do not fit: " + "; ".join(bad[:10]))
    if strict:
        missing = [k for k in own if (not prefixes or k.startswith(prefixes)) and k not in chosen]
        if missing:
            raise CheckpointError(f"model.init_from: {path} lacks {len(missing)} keys, e.g. {missing[:5]}")
    module.load_state_dict(chosen, strict=False)
    return sorted(chosen)


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
