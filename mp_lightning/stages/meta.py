"""Stage 3 of MetaPortrait: Reptile meta-learning of an initialization that personalizes fast.

`MetaLearningModule` wraps another stage (refine, warp or fomm: the `inner` stage, a submodule built
from the same experiment with `model` replaced by `model.inner`) and trains it on `identity_tasks`
batches. For each task (one person) it takes `inner_steps` steps of the inner stage's own loss (no GAN
term) on the task's support pairs with a fresh inner Adam, adds theta_N - phi to a running sum and puts
phi back in place. The outer update then moves phi along the mean difference:

* `outer_rule: reptile` (classic): phi += outer_lr * mean(theta_N - phi), i.e. plain SGD with lr
  outer_lr on the pseudo-gradient -mean(theta_N - phi);
* `outer_rule: official_adam` (the released code): -mean(theta_N - phi) is written into `.grad`, clipped
  to norm `grad_clip` and stepped by Adam (lr 2e-5, warp x0.1, betas (0.5, 0.999)).

Memory: one snapshot of phi and one running sum of the differences (no copy of the module per task),
plus the inner Adam state. Under DDP every rank runs its own tasks; the difference sums and task counts
are all-reduced before the outer step, so each rank applies the same update and the weights stay
identical (the DDP wrapper's gradient hooks are switched off: nothing here goes through them).
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mp_lightning.errors import ConfigError
from mp_lightning.stages.base import Stage
from mp_lightning.state_dicts import load_matching, read_state_dict

INNER_STAGES = ("refine", "warp", "fomm")
OUTER_RULES = ("reptile", "official_adam")


@dataclass
class MetaConfig:
    inner_stage: str = "refine"  # the stage whose initialization is meta-learned: refine | warp | fomm
    inner: Any = field(default_factory=dict)  # that stage's `model:` section (typed by its Config)
    inner_steps: int = 2  # Adam steps per task on its support pairs (official inner_update_steps)
    inner_lr: float = 2e-4  # inner Adam lr (official)
    inner_warp_lr_multiplier: float = 0.1  # warping-network inner lr = inner_lr x this (official inner_warplr_tune)
    inner_betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    outer_rule: str = "official_adam"  # reptile (phi += outer_lr * mean delta) | official_adam
    outer_lr: float = 2e-5  # classic Reptile: the step size epsilon; official: the outer Adam lr
    outer_betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    outer_warp_lr_multiplier: float = 0.1  # warping-network outer lr = outer_lr x this (official warplr_tune)
    grad_clip: float = 0.3  # norm clip of inner gradients and of the official outer pseudo-gradient; 0 = off
    nan_to_num: float = 1e5  # inner gradients are nan_to_num'ed to +-this before clipping (official)
    remove_spectral_norm: bool = False  # strip spectral norm from the generator after init_from (official --remove_sn)
    init_from: Optional[str] = None  # all inner weights from this checkpoint (a base stage's or a meta one)
    lr_milestones: List[int] = field(default_factory=lambda: [2])  # outer lr x lr_gamma at these epochs (official)
    lr_gamma: float = 0.1


# ------------------------------------------------------------------------------------ inner-stage adapters
def inner_param_groups(stage: Stage, warp_lr_multiplier: float) -> list[dict]:
    """The parameters meta-learning (and personalization) trains, as groups with an lr multiplier `mult`.

    refine: refinement network x1 and warping network x `warp_lr_multiplier` (official); warp: the
    warping network alone (x1: the multiplier only balances the two networks); fomm: generator and
    keypoint detector (x1). Discriminators, face embedders and loss networks are never trained here.
    """
    from mp_lightning.stages.fomm import FOMMStage
    from mp_lightning.stages.refine import RefineStage
    from mp_lightning.stages.warp import MetaPortraitStage

    if hasattr(stage, "meta_param_groups"):  # any other stage can say what to train
        groups = stage.meta_param_groups(warp_lr_multiplier)
    elif isinstance(stage, RefineStage):
        groups = [
            {"params": list(stage.generator.refine_parameters()), "mult": 1.0, "name": "refine"},
            {"params": list(stage.generator.warp_parameters()), "mult": warp_lr_multiplier, "name": "warp"},
        ]
    elif isinstance(stage, MetaPortraitStage):
        groups = [{"params": list(stage.generator.warp_parameters()), "mult": 1.0, "name": "warp"}]
    elif isinstance(stage, FOMMStage):
        groups = [{"params": list(stage.generator.parameters()) + list(stage.kp_detector.parameters()),
                   "mult": 1.0, "name": "fomm"}]
    else:
        raise ConfigError(f"meta-learning does not know how to train {type(stage).__name__}")
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    return [g for g in groups if g["params"]]


def stage_loss(stage: Stage, batch: dict) -> torch.Tensor:
    """The stage's own training loss on a pairs batch, without any GAN term (official meta config)."""
    from mp_lightning.stages.fomm import FOMMStage
    from mp_lightning.stages.refine import RefineStage
    from mp_lightning.stages.warp import MetaPortraitStage

    if hasattr(stage, "meta_loss"):
        return stage.meta_loss(batch)
    if isinstance(stage, RefineStage):
        batch = stage.prepare(batch)
        return stage.generator_losses(batch, stage(batch), adversarial=False)["loss"]
    if isinstance(stage, MetaPortraitStage):
        batch = stage.prepare(batch)
        return stage.warp_loss(stage.warp(batch), batch)
    if isinstance(stage, FOMMStage):
        kp_source = stage.kp_detector(batch["source"])
        kp_driving = stage.kp_detector(batch["driving"])
        out = stage.generator(batch["source"], kp_driving=kp_driving, kp_source=kp_source)
        terms = stage.generator_losses(batch, out, kp_driving)
        return sum(v for k, v in terms.items() if k not in ("loss", "gan", "feature_matching"))
    raise ConfigError(f"meta-learning does not know the loss of {type(stage).__name__}")


def make_inner_optimizer(groups: list[dict], lr: float, betas: Sequence[float]) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": g["params"], "lr": lr * g["mult"]} for g in groups], betas=tuple(betas))


def clean_and_clip_(params: Sequence[torch.nn.Parameter], clip: float, limit: float = 1e5) -> None:
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=limit, neginf=-limit)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)


def adapt(stage: Stage, batch: dict, steps: int, optimizer: torch.optim.Optimizer, params: Sequence,
          clip: float = 0.3, nan_to_num: float = 1e5) -> list[float]:
    """`steps` optimizer steps of `stage_loss` on one pairs batch; returns the losses."""
    losses = []
    for _ in range(steps):
        loss = stage_loss(stage, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clean_and_clip_(params, clip, nan_to_num)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


# ---------------------------------------------------------------------------------------- outer update
def outer_update(params: Sequence[torch.nn.Parameter], delta_sum: Sequence[torch.Tensor], num_tasks: int,
                 optimizer: torch.optim.Optimizer, grad_clip: float = 0.0, distributed: bool = True) -> torch.Tensor:
    """Apply the Reptile outer step: pseudo-gradient -mean_t(theta_N,t - phi) stepped by `optimizer`.

    params: phi (already restored); delta_sum: per parameter, the sum over this process's tasks of
    theta_N - phi; num_tasks: how many tasks that sum holds. With torch.distributed initialized (and
    `distributed`) the sums and counts of all ranks are all-reduced first, so the mean is over every
    task of every rank and each rank steps identically. Classic Reptile is `optimizer` = SGD(lr=eps)
    (phi += eps * mean delta); the official form is Adam with `grad_clip`. Returns the mean-delta norm.
    """
    flat = torch.cat([d.reshape(-1) for d in delta_sum] + [delta_sum[0].new_tensor([float(num_tasks)])])
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    count = flat[-1].item()
    if count <= 0:
        raise ValueError("outer_update: no tasks on any rank")
    offset = 0
    for p in params:
        n = p.numel()
        # the pseudo-gradient points from the adapted weights back to phi
        p.grad = (flat[offset:offset + n].view_as(p) / -count).to(p.dtype)
        offset += n
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).float()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def remove_spectral_norm_(module: torch.nn.Module) -> int:
    """Strip every hook-based spectral norm below `module` (official --remove_sn); returns how many."""
    from torch.nn.utils.spectral_norm import SpectralNorm, SpectralNormLoadStateDictPreHook, SpectralNormStateDictHook

    count = 0
    for sub in module.modules():
        if any(isinstance(h, SpectralNorm) for h in sub._forward_pre_hooks.values()):
            torch.nn.utils.remove_spectral_norm(sub)
            count += 1
        # torch leaves the state-dict hooks behind: saved metadata would still claim spectral norm and
        # loading would then ask for weight_orig / weight_u
        for key, hook in list(sub._state_dict_hooks.items()):
            if isinstance(hook, SpectralNormStateDictHook):
                del sub._state_dict_hooks[key]
        for key, hook in list(sub._load_state_dict_pre_hooks.items()):
            if isinstance(getattr(hook, "hook", hook), SpectralNormLoadStateDictPreHook):
                del sub._load_state_dict_pre_hooks[key]
    return count


def tasks_as_pairs(batch: dict, split: str = "query") -> dict:
    """All tasks of an identity_tasks batch as one pairs batch (their `split` frames, concatenated)."""
    from datamodules import task_pairs

    parts = [task_pairs(batch, i, split) for i in range(batch["source"].shape[0])]
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        out[key] = torch.cat(values) if torch.is_tensor(values[0]) else [v for vs in values for v in vs]
    return out


# ------------------------------------------------------------------------------------------------ module
class MetaLearningModule(Stage):
    Config = MetaConfig

    @classmethod
    def model_schema(cls, raw_model: DictConfig | None = None) -> DictConfig:
        from mp_lightning.stages import stage_class

        schema = OmegaConf.structured(cls.Config)
        raw_model = raw_model if raw_model is not None else OmegaConf.create({})
        inner_stage = raw_model.get("inner_stage", "refine")
        if inner_stage not in INNER_STAGES:
            raise ConfigError(f"config key 'model.inner_stage': '{inner_stage}' is not one of {', '.join(INNER_STAGES)}")
        schema.inner = stage_class(inner_stage).model_schema(raw_model.get("inner"))
        return schema

    @classmethod
    def typed_model_config(cls, model: dict) -> Any:
        # keep `inner` as a plain dict: the inner stage types it itself
        merged = OmegaConf.merge(cls.model_schema(OmegaConf.create(model)), model)
        inner = OmegaConf.to_container(merged.inner, resolve=True, enum_to_str=True)
        merged.inner = {}
        hp = OmegaConf.to_object(merged)
        hp.inner = inner
        return hp

    def __init__(self, config: dict, landmark_spec: dict | None = None, inner: Stage | None = None):
        """`inner`: an already built inner stage (tests, programmatic use) instead of one from the config."""
        super().__init__(config, landmark_spec)
        from mp_lightning.stages import stage_class

        hp = self.hp
        if hp.outer_rule not in OUTER_RULES:
            raise ConfigError(f"config key 'model.outer_rule': '{hp.outer_rule}' is not one of {', '.join(OUTER_RULES)}")
        if hp.inner_steps < 1:
            raise ConfigError("config key 'model.inner_steps' must be >= 1")
        inner_config = copy.deepcopy(dict(config))
        inner_config["stage"] = hp.inner_stage
        inner_config["model"] = copy.deepcopy(hp.inner)
        self.inner = inner if inner is not None else stage_class(hp.inner_stage)(config=inner_config,
                                                                                 landmark_spec=landmark_spec)
        if hp.init_from:
            state = read_state_dict(hp.init_from, weights_only=False)
            # a meta checkpoint's keys carry the `inner.` prefix: it loads into the whole module
            target = self if any(k.startswith("inner.") for k in state) else self.inner
            load_matching(target, state, f"model.init_from={hp.init_from}")
        if hp.remove_spectral_norm:
            removed = remove_spectral_norm_(self.inner)
            net = self.inner.hparams["config"]["model"].setdefault("net", {})
            if removed and isinstance(net, dict):
                # a personalized checkpoint of the inner stage must rebuild without spectral norm
                net["spectral_norm"] = False
                self.inner.hparams["config"]["model"]["init_from"] = None
        self.automatic_optimization = False

    # --- contract: the inner stage does the work -------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        if "support_driving" in batch and "driving" not in batch:
            batch = tasks_as_pairs(batch, "query")
        return self.inner(batch)

    def sample_transform(self):
        # the inner stage's per-sample inputs; `task_pairs` carries them into each task's pairs batch
        return self.inner.sample_transform()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        if "query_driving" in batch and "driving" not in batch:
            # in place, so the metric and media callbacks see the pairs the outputs belong to
            batch.update(tasks_as_pairs(batch, "query"))
        return super().validation_step(batch, batch_idx, dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        if "query_driving" in batch and "driving" not in batch:
            batch.update(tasks_as_pairs(batch, "query"))
        return super().test_step(batch, batch_idx, dataloader_idx)

    def animate(self, *args, **kwargs):
        return self.inner.animate(*args, **kwargs)

    # --- Reptile -----------------------------------------------------------------------------------
    def meta_groups(self) -> list[dict]:
        return inner_param_groups(self.inner, self.hp.inner_warp_lr_multiplier)

    def meta_parameters(self) -> list[torch.nn.Parameter]:
        return [p for g in self.meta_groups() for p in g["params"]]

    def inner_loop(self, batch: dict) -> dict:
        """Adapt to every task of `batch` from phi and return the summed differences (phi is restored)."""
        from datamodules import task_pairs

        hp = self.hp
        groups = self.meta_groups()
        params = [p for g in groups for p in g["params"]]
        with torch.no_grad():
            phi = [p.detach().clone() for p in params]
            delta_sum = [torch.zeros_like(p) for p in params]
        losses = []
        num_tasks = batch["source"].shape[0]
        for t in range(num_tasks):
            support = task_pairs(batch, t, "support")
            opt = make_inner_optimizer(groups, hp.inner_lr, hp.inner_betas)  # fresh per task (official)
            losses += adapt(self.inner, support, hp.inner_steps, opt, params, hp.grad_clip, hp.nan_to_num)
            with torch.no_grad():
                for p, p0, d in zip(params, phi, delta_sum):
                    d.add_(p.detach() - p0)
                    p.copy_(p0)
            del opt
        for p in params:
            p.grad = None
        return {"params": params, "delta_sum": delta_sum, "num_tasks": num_tasks, "losses": losses}

    def training_step(self, batch: dict, batch_idx: int):
        if "support_driving" not in batch:
            raise ConfigError("stage 'meta' trains on identity tasks: set data.mode=identity_tasks")
        result = self.inner_loop(batch)
        opt = self.optimizers()
        clip = self.hp.grad_clip if self.hp.outer_rule == "official_adam" else 0.0
        norm = outer_update(result["params"], result["delta_sum"], result["num_tasks"], opt, grad_clip=clip)
        n = result["num_tasks"]
        inner_loss = torch.tensor(float(np.mean(result["losses"])))
        self.log("train/inner_loss", inner_loss, prog_bar=True, batch_size=n)
        self.log("train/inner_loss_last", torch.tensor(result["losses"][-1]), batch_size=n)
        self.log("train/meta_delta_norm", norm, batch_size=n)
        return None

    # --- DDP: the outer update synchronises itself ------------------------------------------------------
    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            # the inner loop backpropagates and steps its own Adam, outside the GradScaler: fp16 gradients
            # would underflow unscaled, and the scaler would unscale the outer pseudo-gradient it never scaled
            raise ConfigError(f"stage 'meta' does not train under trainer.precision={precision}: "
                              f"use bf16-mixed (GPUs with bf16) or 32-true")

    def on_train_start(self) -> None:
        wrapper = getattr(self.trainer.strategy, "model", None)
        if isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            # DDP's reducer would all-reduce (and wait on) every inner backward; the deltas are
            # all-reduced explicitly in `outer_update` instead
            wrapper.require_backward_grad_sync = False

    def on_train_epoch_end(self) -> None:
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()

    def configure_optimizers(self):
        hp = self.hp
        # the warp multiplier only balances the two networks of the refine stage (as in the inner loop)
        groups = [{"params": g["params"], "name": g["name"],
                   "lr": hp.outer_lr * (hp.outer_warp_lr_multiplier if g["name"] == "warp" and len(self.meta_groups()) > 1
                                        else 1.0)}
                  for g in self.meta_groups()]
        if hp.outer_rule == "reptile":
            opt = torch.optim.SGD(groups, lr=hp.outer_lr)
        else:
            opt = torch.optim.Adam(groups, lr=hp.outer_lr, betas=tuple(hp.outer_betas))
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(hp.lr_milestones), hp.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # --- resume: data sampling continues as in the uninterrupted run ------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # tensors and plain tuples only, so that weights-only checkpoint loading accepts them
        checkpoint["meta_rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        rng = checkpoint.get("meta_rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(tuple(rng["python"][:1]) + (tuple(rng["python"][1]),) + tuple(rng["python"][2:]))
