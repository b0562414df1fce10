"""Stage 1 of MetaPortrait: warping with dense landmarks.

Source and driving landmarks are drawn as coloured line images; with the source image they are
encoded by the ladder network into a motion code, which conditions (AdaIN) the dense motion network
that predicts a flow field and an occlusion map. The source is warped with the flow (`deformed`), and
the warping network is trained with a pyramid VGG19 perceptual loss between `deformed` and the
driving frame (the paper's warping stage; `meta_portrait_256_pretrain_warp.yaml` in the official code).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from mp_lightning.networks.metaportrait import MetaPortraitGenerator, MetaPortraitNetConfig
from mp_lightning.stages.base import NonFiniteGrads, Stage, load_init_weights, trainable


@dataclass
class PerceptualConfig:
    backbone: str = "vgg19"  # vgg19 (official, ImageNet file) | st_lpips_vgg16 (ImageNet trunk in the metrics extra)
    pretrained: bool = True  # false = random VGG19, tests only
    scales: List[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])  # image pyramid
    layer_weights: List[float] = field(default_factory=lambda: [10.0] * 5)  # relu1_1 ... relu5_1


@dataclass
class OptimConfig:
    lr: float = 2e-4  # refinement-network learning rate (official lr_generator)
    warp_lr_multiplier: float = 0.1  # warping network lr = lr x this (official warplr_tune)
    discriminator_lr: float = 2e-4
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    lr_milestones: List[int] = field(default_factory=lambda: [45])  # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.1
    grad_clip: float = 0.3  # gradient-norm clipping of every network, after AMP unscaling (official value)
    nonfinite_grads: NonFiniteGrads = NonFiniteGrads.skip  # skip | nan_to_num (released code, fp32)
    nan_to_num: float = 1e5  # with nonfinite_grads=nan_to_num: +-inf becomes +-this (official)


@dataclass
class WarpStageConfig:
    net: MetaPortraitNetConfig = field(default_factory=MetaPortraitNetConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    landmarks: Optional[str] = None  # a preset (official669) instead of the data's landmarks.json
    init_from: Optional[str] = None  # start from this checkpoint's weights (any mp-lightning checkpoint)
    # cross-identity (a batch with the driving clip's first frame, or `animate`): draw the driving landmarks
    # moved onto the source's face shape (`landmarks.retarget_landmarks`); false = as detected
    retarget_landmarks: bool = True
    # init_from copies every matching weight, not only the stage's own choice (refine: the warping network,
    # as the official stage 2); for continuing a stage-2 model (experiments/paper/personalization.yaml)
    init_whole_model: bool = False


class MetaPortraitStage(Stage):
    """What the warp and refinement stages share: the generator, landmark drawing, the warp loss."""

    Config = WarpStageConfig
    #: weights that `init_from` copies (the official code copies only the warping network into stage 2)
    init_prefixes: tuple[str, ...] = ()

    def __init__(self, config: dict, landmark_spec: dict | None = None):
        super().__init__(config, landmark_spec)
        from mp_lightning.landmarks import LandmarkSpec
        from mp_lightning.networks.perceptual import VGGPerceptualLoss

        hp = self.hp
        data_size = (config.get("data") or {}).get("image_size")
        if data_size is not None and data_size != hp.net.image_size:
            from mp_lightning.errors import ConfigError

            raise ConfigError(
                f"config key 'data.image_size' is {data_size} but 'model.net.image_size' is {hp.net.image_size}: "
                f"the network is built for one resolution, set both to the same value"
            )
        if hp.landmarks:
            self.landmark_spec = LandmarkSpec.from_json({"preset": hp.landmarks})
        elif landmark_spec is not None:
            self.landmark_spec = LandmarkSpec.from_json(landmark_spec)
        else:
            from mp_lightning.errors import ConfigError

            raise ConfigError("the data has no landmarks.json and 'model.landmarks' names no preset (e.g. official669)")
        self.generator = MetaPortraitGenerator(hp.net)
        self.perceptual = VGGPerceptualLoss(
            scales=hp.perceptual.scales, layer_weights=hp.perceptual.layer_weights, pretrained=hp.perceptual.pretrained,
            backbone=hp.perceptual.backbone,
        )
        if hp.init_from:
            load_init_weights(self, hp.init_from, prefixes=() if hp.init_whole_model else self.init_prefixes)

    # --- inputs -------------------------------------------------------------------------------------
    def prepare(self, batch: dict) -> dict:
        """Add what the official loader derives from landmarks (line images, eye/mouth masks, gaze points).

        Training batches already carry them (drawn per sample in the DataLoader workers, see
        `sample_transform`); this fallback draws them here for batches that do not (animation, tests,
        data built outside `connect_stage_and_data`), at the cost of a host round trip.
        """
        from mp_lightning.landmarks import metaportrait_inputs

        if "source_line" in batch and "driving_line" in batch:
            return batch
        spec = self.landmark_spec
        for key in ("source_landmarks", "driving_landmarks"):
            if key not in batch:
                from mp_lightning.errors import DataError

                raise DataError(f"the batch has no '{key}': MetaPortrait draws its inputs from landmarks")
            if batch[key].shape[-2] != spec.num_points:
                from mp_lightning.errors import DataError

                raise DataError(
                    f"'{key}' has {batch[key].shape[-2]} points per frame but this model was trained on the "
                    f"landmark set '{spec.name}' with {spec.num_points}: use landmarks from the same detector"
                )
        return metaportrait_inputs(batch, self.landmark_spec, size=self.hp.net.image_size,
                                   retarget=self.hp.retarget_landmarks)

    def sample_transform(self):
        """Line images, eye/mouth masks and gaze points drawn per sample in the DataLoader workers (the
        official loader's place for them); `prepare` then finds them in the batch and does nothing."""
        from mp_lightning.landmarks import MetaPortraitSampleInputs

        return MetaPortraitSampleInputs(self.landmark_spec, self.hp.net.image_size, retarget=self.hp.retarget_landmarks)

    @property
    def cross_identity_protocol(self) -> str:
        if self.hp.retarget_landmarks:
            return "landmarks retargeted to the source face (relative to the driving clip's first frame, scale-adapted)"
        return "driving landmarks as detected (absolute; carries the driving face shape)"

    # --- warping ------------------------------------------------------------------------------------
    def warp(self, batch: dict) -> dict:
        return self.generator.warp(batch["source"], batch["source_line"], batch["driving_line"])

    def forward(self, batch: dict) -> dict:
        batch = self.prepare(batch)
        out = self.warp(batch)
        out["prediction"] = out["deformed"]
        return out

    def warp_loss(self, out: dict, batch: dict) -> torch.Tensor:
        return self.perceptual(out["deformed"], batch["driving"])

    # --- optimisation -------------------------------------------------------------------------------
    def generator_param_groups(self) -> list[dict]:
        """The generator's trainable parameters as Adam groups; both clip together, as the official
        `clip_grad_norm_(generator.parameters())`."""
        o = self.hp.optim
        groups = [
            {"params": trainable(self.generator.refine_parameters()), "lr": o.lr, "name": "refine"},
            {"params": trainable(self.generator.warp_parameters()), "lr": o.lr * o.warp_lr_multiplier, "name": "warp"},
        ]
        return [dict(g, clip_group="generator") for g in groups if g["params"]]

    def _adam(self, groups):
        return torch.optim.Adam(groups, betas=tuple(self.hp.optim.betas))

    def _scheduler(self, optimizer):
        o = self.hp.optim
        return {"scheduler": torch.optim.lr_scheduler.MultiStepLR(optimizer, list(o.lr_milestones), o.lr_gamma),
                "interval": "epoch"}

    # --- adaptation ---------------------------------------------------------------------------------
    def adaptation_param_groups(self, warp_lr_multiplier: float) -> list[dict]:
        # the warping network alone (x1: the multiplier only balances it against the refinement network)
        return [{"params": list(self.generator.warp_parameters()), "mult": 1.0, "name": "warp"}]

    def adaptation_loss(self, batch: dict) -> torch.Tensor:
        batch = self.prepare(batch)
        return self.warp_loss(self.warp(batch), batch)

    # --- animation ----------------------------------------------------------------------------------
    def animate(self, source, driving, driving_landmarks=None, source_landmarks=None, retarget: bool | None = None,
                **kwargs):
        """`retarget` (default: model.retarget_landmarks): the driving landmarks move the source's face relative
        to the first driving frame (another person's face shape stays theirs); false: drawn as detected."""
        if driving_landmarks is None or source_landmarks is None:
            from mp_lightning.errors import DataError

            raise DataError("MetaPortrait animation needs source and driving landmarks")
        if self.hp.retarget_landmarks if retarget is None else retarget:
            from mp_lightning.landmarks import retarget_landmarks

            source_landmarks = source_landmarks.reshape(*source_landmarks.shape[-2:])
            driving_landmarks = retarget_landmarks(source_landmarks, driving_landmarks, driving_landmarks[:1])
        return super().animate(source, driving, driving_landmarks, source_landmarks, **kwargs)


class WarpStage(MetaPortraitStage):
    """Stage 1: only the warping network (ladder encoder + dense motion network) is trained.

    The refinement network stays in the module (stage 2 and the official checkpoint layout carry it) but
    is frozen, and so is the occlusion head: the warp loss on `deformed` never reaches either, and DDP
    must not wait for gradients that cannot come.
    """

    def __init__(self, config: dict, landmark_spec: dict | None = None):
        super().__init__(config, landmark_spec)
        self.automatic_optimization = False
        for p in self.generator.refine_parameters():
            p.requires_grad_(False)
        self.generator.dense_motion_network.occlusion_net.requires_grad_(False)

    def training_step(self, batch: dict, batch_idx: int):
        batch = self.prepare(batch)
        out = self.warp(batch)
        loss = self.warp_loss(out, batch)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()  # clipping and the non-finite check run in `on_before_optimizer_step`
        self.log_losses({"loss": loss, "warp_perceptual": loss}, batch_size=batch["source"].shape[0])
        return loss

    def configure_optimizers(self):
        o = self.hp.optim
        opt = self._adam([{"params": trainable(self.generator.warp_parameters()), "lr": o.lr * o.warp_lr_multiplier,
                           "name": "warp", "clip_group": "generator"}])
        return {"optimizer": opt, "lr_scheduler": self._scheduler(opt)}
