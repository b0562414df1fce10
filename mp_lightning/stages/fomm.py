"""FOMM baseline (First Order Motion Model, vox-256) as a stage: same data, callbacks and metrics as MetaPortrait.

Training follows the official `modules/model.py` / `train.py` (BASELINES.md 1.5): keypoints of source and
driving from the keypoint detector, the occlusion-aware generator reconstructs the driving frame; losses
are the pyramid VGG19 perceptual loss and the equivariance value/jacobian losses under a random TPS
transform, plus (vox-adv only: `losses.generator_gan > 0`) LSGAN with feature matching against a
multi-scale discriminator that also sees the driving keypoint heatmaps. Three Adam optimisers (generator,
keypoint detector, discriminator), the detector stepped from the generator's backward pass; MultiStepLR
per epoch.

Official checkpoints load through `mp-lightning import-checkpoint fomm vox-cpk.pth.tar --out X.ckpt`
(see `mp_lightning.checkpoints.fomm`, which also decides the grid_sample convention).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from omegaconf import OmegaConf

from mp_lightning.losses.adversarial import feature_matching_loss, lsgan_discriminator_loss, lsgan_generator_loss
from mp_lightning.losses.equivariance import TransformParams, equivariance_losses
from mp_lightning.networks.fomm_motion import expand_kp, transfer_motion
from mp_lightning.networks.fomm import FOMMNetConfig, KPDetector, OcclusionAwareGenerator, build_fomm_discriminator
from mp_lightning.stages.base import NonFiniteGrads, Stage, call_frozen, detached, load_init_weights


@dataclass
class FOMMPerceptualConfig:
    backbone: str = "vgg19"  # vgg19 (official, ImageNet file) | st_lpips_vgg16 (ImageNet trunk in the metrics extra)
    pretrained: bool = True  # false = random VGG19, tests only
    scales: List[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    layer_weights: List[float] = field(default_factory=lambda: [10.0] * 5)  # relu1_1 ... relu5_1


@dataclass
class FOMMLossWeights:
    perceptual: float = 1.0  # multiplies the perceptual layer weights
    equivariance_value: float = 10.0
    equivariance_jacobian: float = 10.0
    generator_gan: float = 0.0  # vox-256: 0 (no GAN); vox-adv-256: 1
    discriminator_gan: float = 1.0
    feature_matching: List[float] = field(default_factory=lambda: [10.0, 10.0, 10.0, 10.0])  # per disc block


@dataclass
class FOMMOptimConfig:
    lr_generator: float = 2e-4
    lr_kp_detector: float = 2e-4
    lr_discriminator: float = 2e-4
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    lr_milestones: List[int] = field(default_factory=lambda: [60, 90])  # epochs; vox-adv: none
    lr_gamma: float = 0.1
    grad_clip: float = 0.0  # gradient-norm clip per network after AMP unscaling; official: none
    nonfinite_grads: NonFiniteGrads = NonFiniteGrads.skip  # a step with NaN/inf gradients is skipped and counted


@dataclass
class FOMMStageConfig:
    net: FOMMNetConfig = field(default_factory=FOMMNetConfig)
    perceptual: FOMMPerceptualConfig = field(default_factory=FOMMPerceptualConfig)
    losses: FOMMLossWeights = field(default_factory=FOMMLossWeights)
    transform: TransformParams = field(default_factory=TransformParams)  # equivariance TPS sigmas
    optim: FOMMOptimConfig = field(default_factory=FOMMOptimConfig)
    sync_batchnorm: bool = True  # multi-process: BatchNorm over the global batch (official: synchronised BN)
    relative: bool = True  # animation: relative motion (demo --relative) or absolute
    adapt_movement_scale: bool = True  # animation: scale relative motion by hull areas (demo --adapt_scale)
    init_from: Optional[str] = None  # start from this checkpoint's weights (any mp-lightning checkpoint)


def keypoint_overlay(image: torch.Tensor, keypoints: torch.Tensor, radius: float = 0.03) -> torch.Tensor:
    """Image (B, 3, H, W) in [0, 1] with keypoints (B, K, 2) in [-1, 1] drawn as coloured dots -> (B, 3, H, W)."""
    from mp_lightning.networks.blocks import kp2gaussian

    b, k = keypoints.shape[:2]
    blobs = kp2gaussian(keypoints.detach().to(image.dtype), image.shape[2:], radius ** 2)  # (B, K, H, W)
    hue = torch.arange(k, device=image.device, dtype=image.dtype) / max(k, 1)
    phases = torch.tensor([0.0, 1 / 3, 2 / 3], device=image.device, dtype=image.dtype)
    colors = 0.5 + 0.5 * torch.cos(2 * torch.pi * (hue[:, None] + phases[None]))  # (K, 3)
    alpha, idx = blobs.max(dim=1)  # strongest dot per pixel
    color = colors[idx].permute(0, 3, 1, 2)
    alpha = (alpha.unsqueeze(1) * 1.5).clamp(0, 1)
    return image * (1 - alpha) + color * alpha


class FOMMStage(Stage):
    """FOMM on `pairs` batches. forward(batch) -> prediction (B, 3, H, W) in [0, 1], deformed, occlusion_map
    (B, 1, h, w), deformation (B, h, w, 2), mask, kp_source / kp_driving (B, K, 2) with their `_jacobian`
    (B, K, 2, 2), keypoints_overlay (driving frame with its keypoints, for the media callback)."""

    Config = FOMMStageConfig

    def __init__(self, config: dict, landmark_spec: dict | None = None):
        super().__init__(config, landmark_spec)
        from mp_lightning.networks.perceptual import VGGPerceptualLoss

        hp = self.hp
        self.automatic_optimization = False
        self.kp_detector = KPDetector.from_config(hp.net)
        self.generator = OcclusionAwareGenerator.from_config(hp.net)
        # always built: official checkpoints carry it even when vox-256 never trains it
        self.discriminator = build_fomm_discriminator(hp.net)
        weights = [w * hp.losses.perceptual for w in hp.perceptual.layer_weights]
        self.perceptual = VGGPerceptualLoss(scales=hp.perceptual.scales, layer_weights=weights,
                                            pretrained=hp.perceptual.pretrained, backbone=hp.perceptual.backbone)
        if hp.init_from:
            load_init_weights(self, hp.init_from, prefixes=("kp_detector.", "generator.", "discriminator."))
        if not self.trains_discriminator:
            self.discriminator.requires_grad_(False)

    @property
    def trains_discriminator(self) -> bool:
        # official train.py steps the discriminator only when the generator has a GAN term (vox-adv)
        return bool(self.hp.losses.generator_gan)

    def setup(self, stage: str) -> None:
        if self.hp.sync_batchnorm and self.trainer.world_size > 1:
            from mp_lightning.losses.batch_statistics import sync_batchnorm_

            sync_batchnorm_(self.kp_detector, self.trainer.strategy.root_device)
            sync_batchnorm_(self.generator, self.trainer.strategy.root_device)

    @classmethod
    def from_networks(cls, kp_detector, generator, discriminator, net_config: FOMMNetConfig,
                      config: dict | None = None) -> "FOMMStage":
        """A stage holding the given (e.g. imported official) networks. `config` is a full experiment dict;
        by default a minimal one for `stage: fomm` with the net config (data.image_size 256)."""
        net = OmegaConf.to_container(OmegaConf.structured(net_config))
        if config is None:
            config = {"stage": "fomm", "name": "fomm_imported", "data": {"image_size": 256},
                      "model": {"net": net, "perceptual": {"pretrained": False}}}
        else:
            config = OmegaConf.to_container(OmegaConf.merge(config, {"stage": "fomm", "model": {"net": net}}))
        stage = cls(config)
        stage.kp_detector.load_state_dict(kp_detector.state_dict())
        stage.generator.load_state_dict(generator.state_dict())
        if discriminator is not None:
            stage.discriminator.load_state_dict(discriminator.state_dict())
        return stage.eval()

    # --- inference ------------------------------------------------------------------------------------
    @property
    def cross_identity_protocol(self) -> str:
        if self.hp.relative:
            scale = ", adapted scale" if self.hp.adapt_movement_scale else ""
            return f"relative keypoints from the driving clip's first frame{scale} (FOMM demo)"
        return "absolute keypoints"

    def forward(self, batch: dict) -> dict:
        """Absolute motion (the reconstruction protocol: the source's own video); a cross-identity batch,
        which carries the driving clip's first frame, moves the source keypoints relative to it (model.relative,
        FOMM's published protocol for another person's motion)."""
        source, driving = batch["source"], batch["driving"]
        kp_source = self.kp_detector(source)
        kp_driving = self.kp_detector(driving)
        if "driving_initial" in batch and self.hp.relative:
            kp_motion = transfer_motion(kp_source, kp_driving, self.kp_detector(batch["driving_initial"]),
                                        mode="relative", adapt_movement_scale=self.hp.adapt_movement_scale)
            out = self.generator(source, kp_driving=kp_motion, kp_source=kp_source)
        else:
            out = self.generator(source, kp_driving=kp_driving, kp_source=kp_source)
        out["kp_source"], out["kp_driving"] = kp_source["value"], kp_driving["value"]
        if "jacobian" in kp_driving:
            out["kp_source_jacobian"], out["kp_driving_jacobian"] = kp_source["jacobian"], kp_driving["jacobian"]
        if not self.training:
            out["keypoints_overlay"] = keypoint_overlay(driving, kp_driving["value"])
        return out

    @torch.no_grad()
    def animate(self, source, driving, driving_landmarks=None, source_landmarks=None, relative: Optional[bool] = None,
                adapt_movement_scale: Optional[bool] = None, batch_size: int = 8, progress: bool = False,
                **_ignored) -> torch.Tensor:
        """(T, 3, H, W) predictions in [0, 1] for source (3, H, W) and driving (T, 3, H, W) in [0, 1].

        Landmarks are not used (FOMM finds its own keypoints). `relative` (default: model.relative) moves
        the source keypoints by the driving motion relative to frame 0, with `adapt_movement_scale`
        (default: model.adapt_movement_scale); `relative=False` is absolute motion.
        """
        relative = self.hp.relative if relative is None else relative
        adapt = self.hp.adapt_movement_scale if adapt_movement_scale is None else adapt_movement_scale
        device = self.device
        source = source.reshape(1, *source.shape[-3:]).to(device)
        kp_source = self.kp_detector(source)
        kp_initial = self.kp_detector(driving[:1].to(device))
        steps = range(0, driving.shape[0], batch_size)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="animate", unit="batch")
        frames = []
        for start in steps:
            drv = driving[start:start + batch_size].to(device)
            n = drv.shape[0]
            kp_src_n = expand_kp(kp_source, n)
            kp_drv = transfer_motion(kp_src_n, self.kp_detector(drv), expand_kp(kp_initial, n),
                                     mode="relative" if relative else "absolute", adapt_movement_scale=adapt)
            pred = self.generator(source.expand(n, -1, -1, -1), kp_driving=kp_drv, kp_source=kp_src_n)["prediction"]
            frames.append(pred.clamp(0, 1).cpu())
        return torch.cat(frames)

    # --- training -------------------------------------------------------------------------------------
    def generator_losses(self, batch: dict, out: dict, kp_driving: dict, real_maps: dict | None = None) -> dict:
        """Perceptual, equivariance and (vox-adv) GAN + feature-matching terms. The adversarial terms see the
        discriminator through detached weights; `real_maps`: its output on the driving pyramid, if computed."""
        w = self.hp.losses
        pyramid = self.perceptual.pyramid
        pred_pyr, target_pyr = pyramid(out["prediction"]), pyramid(batch["driving"])
        terms = {"perceptual": self.perceptual.forward_pyramids(pred_pyr, target_pyr)}
        if w.equivariance_value or w.equivariance_jacobian:
            eq = equivariance_losses(
                self.kp_detector, batch["driving"], kp_driving, params=self.hp.transform,
                value_weight=w.equivariance_value, jacobian_weight=w.equivariance_jacobian,
                align_corners=self.hp.net.align_corners,
            )
            terms.update({k: v for k, v in eq.items() if k.startswith("equivariance_")})
        if w.generator_gan:
            kp_d = {"value": kp_driving["value"].detach()}
            fake = call_frozen(self.discriminator, pred_pyr, kp=kp_d)
            terms["gan"] = w.generator_gan * lsgan_generator_loss(fake)
            if sum(w.feature_matching):
                if real_maps is None:
                    with torch.no_grad():
                        real_maps = self.discriminator(target_pyr, kp=kp_d)
                terms["feature_matching"] = feature_matching_loss(detached(real_maps), fake, list(w.feature_matching))
        terms["loss"] = sum(terms.values())
        return terms

    def adaptation_param_groups(self, warp_lr_multiplier: float) -> list[dict]:
        # generator and keypoint detector together (x1: FOMM has no separate warping network to balance)
        return [{"params": list(self.generator.parameters()) + list(self.kp_detector.parameters()),
                 "mult": 1.0, "name": "fomm"}]

    def adaptation_loss(self, batch: dict) -> torch.Tensor:
        kp_source = self.kp_detector(batch["source"])
        kp_driving = self.kp_detector(batch["driving"])
        out = self.generator(batch["source"], kp_driving=kp_driving, kp_source=kp_source)
        terms = self.generator_losses(batch, out, kp_driving)
        return sum(v for k, v in terms.items() if k not in ("loss", "gan", "feature_matching"))

    def training_step(self, batch: dict, batch_idx: int):
        opt = self.optimizers()
        kp_source = self.kp_detector(batch["source"])
        kp_driving = self.kp_detector(batch["driving"])
        out = self.generator(batch["source"], kp_driving=kp_driving, kp_source=kp_source)
        real = None
        if self.trains_discriminator:
            pyramid = self.perceptual.pyramid
            kp_d = {"value": kp_driving["value"].detach()}
            real = self.discriminator(pyramid(batch["driving"]), kp=kp_d)
        terms = self.generator_losses(batch, out, kp_driving, real_maps=real)
        total = terms["loss"]
        if self.trains_discriminator:
            fake = self.discriminator(pyramid(out["prediction"].detach()), kp=kp_d)
            terms["discriminator"] = self.hp.losses.discriminator_gan * lsgan_discriminator_loss(real, fake)
            total = total + terms["discriminator"]
        # one backward feeds generator, keypoint detector and (vox-adv) discriminator, each with its own terms
        # only (official train.py: G and KP from one backward, then D on the detached prediction); one Adam
        # with a group per network, so DDP reduces each parameter once and a GradScaler checks all of them
        opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        opt.step()
        self.log_losses(terms, batch_size=batch["source"].shape[0])
        return terms["loss"]

    def configure_optimizers(self):
        o = self.hp.optim
        groups = [
            {"params": list(self.generator.parameters()), "lr": o.lr_generator, "name": "generator"},
            {"params": list(self.kp_detector.parameters()), "lr": o.lr_kp_detector, "name": "kp_detector"},
        ]
        if self.trains_discriminator:
            groups.append({"params": list(self.discriminator.parameters()), "lr": o.lr_discriminator,
                           "name": "discriminator"})
        opt = torch.optim.Adam([dict(g, clip_group=g["name"]) for g in groups], betas=tuple(o.betas))
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(o.lr_milestones), o.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
