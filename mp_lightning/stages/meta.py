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

After each task phi *and the inner stage's buffers* (spectral-norm u/v, BatchNorm statistics) are put back
(`reptile.TaskState`), so that no task sees another's buffers. A task is one clip (`data.task_unit: clip`,
the official sampling, whose epoch is one task per frame of every clip) or one identity's videos
(`identity`); `lr_milestones` count epochs or steps (`lr_interval`), the budget is `trainer.max_steps` or
`trainer.max_epochs`.

Validation scores what Reptile optimises: besides the zero-shot query predictions of phi (`val/<metric>`),
a copy adapted for `val_inner_steps` inner steps on each task's support predicts its query
(`val/adapted/<metric>`).

Memory: one snapshot of phi and one running sum of the differences (no copy of the module per task),
plus the inner Adam state. Under DDP every rank runs its own tasks; the difference sums and task counts
are all-reduced before the outer step, so each rank applies the same update and the weights stay
identical (the DDP wrapper's gradient hooks are switched off: nothing here goes through them).
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mp_lightning.errors import ConfigError
from mp_lightning.batch import holds_tasks, task_pairs, tasks_as_pairs
from mp_lightning.reptile import TaskState, adapt, adaptation_groups, inner_loop, make_inner_optimizer, outer_update
from mp_lightning.choices import Choice
from mp_lightning.stages import stage_class, stage_names
from mp_lightning.stages.base import Stage
from mp_lightning.state_dicts import load_matching, read_state_dict

# any stage but this one can be the inner stage; one that defines no adaptation is refused when composed
InnerStage = Choice("InnerStage", {name: name for name in stage_names() if name != "meta"})


class OuterRule(Choice):
    reptile = "reptile"  # classic: phi += outer_lr * mean delta
    official_adam = "official_adam"  # the released code: Adam on -mean delta, clipped


LR_INTERVALS = ("epoch", "step")


@dataclass
class MetaConfig:
    inner_stage: InnerStage = InnerStage("refine")  # the stage whose initialization is meta-learned: refine | warp | fomm
    inner: Any = field(default_factory=dict)  # that stage's `model:` section (typed by its Config)
    inner_steps: int = 2  # Adam steps per task on its support pairs (official inner_update_steps)
    inner_lr: float = 2e-4  # inner Adam lr (official)
    inner_warp_lr_multiplier: float = 0.1  # warping-network inner lr = inner_lr x this (official inner_warplr_tune)
    inner_betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    outer_rule: OuterRule = OuterRule.official_adam  # reptile (phi += outer_lr * mean delta) | official_adam
    outer_lr: float = 2e-5  # classic Reptile: the step size epsilon; official: the outer Adam lr
    outer_betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    outer_warp_lr_multiplier: float = 0.1  # warping-network outer lr = outer_lr x this (official warplr_tune)
    grad_clip: float = 0.3  # norm clip of inner gradients and of the official outer pseudo-gradient; 0 = off
    nan_to_num: float = 1e5  # inner gradients are nan_to_num'ed to +-this before clipping (official)
    remove_spectral_norm: bool = False  # strip spectral norm from the generator after init_from (official --remove_sn)
    init_from: Optional[str] = None  # all inner weights from this checkpoint (a base stage's or a meta one)
    lr_milestones: List[int] = field(default_factory=lambda: [2])  # outer lr x lr_gamma at these epochs/steps (official: epoch 2)
    lr_gamma: float = 0.1
    lr_interval: str = "epoch"  # epoch | step: the unit of lr_milestones (an epoch depends on data.task_unit)
    # validation also adapts a copy to each task's support and scores its query (val/adapted/<metric>,
    # beside the zero-shot val/<metric>): the quantity Reptile optimises; None = inner_steps, 0 = off
    val_inner_steps: Optional[int] = None


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


def _cloned(value):
    """Tensors (in dicts/lists) cloned: a tensor made under inference mode cannot take part in autograd."""
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cloned(v) for v in value]
    return value.clone() if torch.is_tensor(value) else value


# ------------------------------------------------------------------------------------------------ module
class MetaLearningModule(Stage):
    Config = MetaConfig

    @classmethod
    def model_schema(cls, raw_model: DictConfig | None = None) -> DictConfig:
        schema = OmegaConf.structured(cls.Config)
        raw_model = raw_model if raw_model is not None else OmegaConf.create({})
        inner_stage = InnerStage.parse(raw_model.get("inner_stage", "refine"), "model.inner_stage")
        inner_cls = stage_class(inner_stage.value)
        if inner_cls.adaptation_loss is Stage.adaptation_loss:
            raise ConfigError(f"config key 'model.inner_stage': stage '{inner_stage}' defines no adaptation "
                              f"(Stage.adaptation_loss / adaptation_param_groups): it cannot be meta-learned")
        schema.inner = inner_cls.model_schema(raw_model.get("inner"))
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
        hp = self.hp
        if hp.inner_steps < 1:
            raise ConfigError("config key 'model.inner_steps' must be >= 1")
        if hp.lr_interval not in LR_INTERVALS:
            raise ConfigError(f"config key 'model.lr_interval': '{hp.lr_interval}' is not one of {', '.join(LR_INTERVALS)}")
        if hp.val_inner_steps is not None and hp.val_inner_steps < 0:
            raise ConfigError("config key 'model.val_inner_steps' must be >= 0 (0: no adapted validation)")
        inner_config = copy.deepcopy(dict(config))
        inner_config["stage"] = hp.inner_stage.value
        inner_config["model"] = copy.deepcopy(hp.inner)
        self.inner = inner if inner is not None else stage_class(hp.inner_stage.value)(config=inner_config,
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
        if holds_tasks(batch):
            batch = tasks_as_pairs(batch, "query")
        return self.inner(batch)

    def sample_transform(self):
        # the inner stage's per-sample inputs; `task_pairs` carries them into each task's pairs batch
        return self.inner.sample_transform()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        adapted = None
        if holds_tasks(batch):
            steps = self.hp.inner_steps if self.hp.val_inner_steps is None else self.hp.val_inner_steps
            if steps > 0:
                adapted = self.adapted_query_predictions(batch, steps)
            # in place, so the metric and media callbacks see the pairs the outputs belong to
            batch.update(tasks_as_pairs(batch, "query"))
        out = super().validation_step(batch, batch_idx, dataloader_idx)
        if adapted is not None:
            # the metrics callback scores each variant under val/<name>/ with the same batch
            out["variants"] = {"adapted": {"prediction": adapted}}
        return out

    def adapted_query_predictions(self, batch: dict, steps: int) -> torch.Tensor:
        """Query predictions (sum of Q over tasks, 3, H, W) after `steps` inner steps on each task's support.

        The inner loop of training (fresh inner Adam, the stage's adaptation loss in training mode) from the
        current phi; phi and the buffers are put back after every task. Runs under Lightning's inference mode:
        the task's tensors are cloned out of it so that the inner steps can backpropagate.
        """
        hp = self.hp
        groups = self.meta_groups()
        params = [p for g in groups for p in g["params"]]
        was_training = self.inner.training
        predictions = []
        with torch.inference_mode(False), torch.enable_grad():
            state = TaskState(self.inner, params)
            for t in range(batch["source"].shape[0]):
                support = _cloned(task_pairs(batch, t, "support"))
                query = _cloned(task_pairs(batch, t, "query"))
                self.inner.train()
                adapt(self.inner, support, steps, make_inner_optimizer(groups, hp.inner_lr, hp.inner_betas), params,
                      hp.grad_clip, hp.nan_to_num)
                self.inner.eval()
                with torch.no_grad():
                    predictions.append(self.inner(query)["prediction"].detach())
                state.restore()
            for p in params:
                p.grad = None
        self.inner.train(was_training)
        return torch.cat(predictions)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        if holds_tasks(batch):
            batch.update(tasks_as_pairs(batch, "query"))
        return super().test_step(batch, batch_idx, dataloader_idx)

    def animate(self, *args, **kwargs):
        return self.inner.animate(*args, **kwargs)

    def source_inputs(self) -> tuple[str, ...]:
        return self.inner.source_inputs()

    @property
    def animation_keys(self) -> tuple[str, ...]:
        return self.inner.animation_keys

    def animation_inputs(self, *args, **kwargs) -> dict:
        return self.inner.animation_inputs(*args, **kwargs)

    def clip_inputs(self, *args, **kwargs) -> tuple[dict, dict]:
        return self.inner.clip_inputs(*args, **kwargs)

    @property
    def cross_identity_protocol(self) -> str:
        return self.inner.cross_identity_protocol

    def unwrapped(self) -> Stage:
        return self.inner

    def adaptation_param_groups(self, warp_lr_multiplier: float) -> list[dict]:
        return self.inner.adaptation_param_groups(warp_lr_multiplier)

    def adaptation_loss(self, batch: dict) -> torch.Tensor:
        return self.inner.adaptation_loss(batch)

    # --- Reptile -----------------------------------------------------------------------------------
    def meta_groups(self) -> list[dict]:
        return adaptation_groups(self.inner, self.hp.inner_warp_lr_multiplier)

    def meta_parameters(self) -> list[torch.nn.Parameter]:
        return [p for g in self.meta_groups() for p in g["params"]]

    def inner_loop(self, batch: dict) -> dict:
        """Adapt to every task of `batch` from phi and return the summed differences (phi is restored)."""
        hp = self.hp
        return inner_loop(self.inner, self.meta_groups(), batch, hp.inner_steps, hp.inner_lr, hp.inner_betas,
                          hp.grad_clip, hp.nan_to_num)

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
        if self.hp.lr_interval == "step":
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()
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

    @property
    def lr_interval(self) -> str:
        return self.hp.lr_interval

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
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": hp.lr_interval}}

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
