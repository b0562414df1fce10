"""Stage 3 of MetaPortrait: temporally consistent super-resolution (256 -> 512 officially).

Trained on `windows` batches: the ground truth is the window `frames` (B, T, 3, H, W) at `data.image_size`
(= `model.net.out_size`), the low-quality input is half that size, made either from the ground truth
(bicubic downsampling, optionally blurred / noised / JPEG-like compressed) or by a trained base-model
checkpoint that re-animates each frame from the window's first frame (the official pipeline trains SR on
base-model outputs). Losses follow the official GFPGAN-based training: L1 0.1, VGG19 perceptual 1 and Gram
style 50 on pre-ReLU conv1_2 ... conv5_4 (layer weights 0.1, 0.1, 1, 1, 1), optional GAN; Adam (0.9, 0.99)
at 1e-4 with a cosine schedule, and an EMA copy of the generator (0.999) that validation and export use.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import torch
from torch.nn import functional as F

from datamodules.degradations import bicubic, gaussian_blur, jpeg_like
from mp_lightning.choices import Choice
from mp_lightning.errors import ConfigError
from mp_lightning.networks.discriminator import PatchDiscriminator
from mp_lightning.networks.perceptual import SRPerceptualStyleLoss
from mp_lightning.networks.temporal_sr import TemporalSRConfig, TemporalSRGenerator, init_from_gfpgan
from mp_lightning.stages.base import NonFiniteGrads, Stage, call_frozen, detached


class LQSource(Choice):
    downsample = "downsample"  # bicubic from the ground truth (plus the configured degradations)
    base_model = "base_model"  # a trained base model re-animates each frame from the window's first frame



# ----------------------------------------------------------------------------------------------------------
# config


@dataclass
class SRPerceptualConfig:
    pretrained: bool = True  # ImageNet VGG19 (`mp-lightning weights`); false = random, tests / smoke runs only
    layer_weights: List[float] = field(default_factory=lambda: [0.1, 0.1, 1.0, 1.0, 1.0])  # conv1_2..conv5_4


@dataclass
class SRLossConfig:
    l1: float = 0.1  # official pixel_opt loss_weight
    perceptual: float = 1.0  # official perceptual_weight
    style: float = 50.0  # official style_weight (Gram matrices of the same VGG layers)
    gan: float = 0.0  # > 0 turns the discriminator on (off by default: the official SR config trains without)


@dataclass
class SRGANConfig:
    channels: int = 32  # width of the first discriminator conv (doubles per level, capped at 8x)
    num_downs: int = 4  # stride-2 convs of the patch discriminator
    lr: float = 1e-4


@dataclass
class SRDegradationConfig:
    """Extra degradations of the bicubic LQ frames (training only unless `on_validation`)."""

    blur_sigma: List[float] = field(default_factory=lambda: [0.0, 0.0])  # Gaussian blur sigma range (HR pixels)
    noise_std: List[float] = field(default_factory=lambda: [0.0, 0.0])  # additive Gaussian noise range ([0, 1] units)
    jpeg_quality: List[float] = field(default_factory=lambda: [100.0, 100.0])  # JPEG-like 8x8 DCT quantisation
    on_validation: bool = False  # also degrade validation inputs (with a fixed seed)
    seed: int = 0  # seed of the validation degradations


@dataclass
class SROptimConfig:
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eta_min: float = 1e-7  # cosine schedule floor
    grad_clip: float = 0.0  # gradient-norm clip per network after AMP unscaling; official: none
    nonfinite_grads: NonFiniteGrads = NonFiniteGrads.skip  # a step with NaN/inf gradients is skipped and counted
    cosine_steps: Optional[int] = None  # cosine period in steps; None = trainer.max_steps (or the estimated total)


@dataclass
class SRStageConfig:
    net: TemporalSRConfig = field(default_factory=TemporalSRConfig)
    losses: SRLossConfig = field(default_factory=SRLossConfig)
    perceptual: SRPerceptualConfig = field(default_factory=SRPerceptualConfig)
    gan: SRGANConfig = field(default_factory=SRGANConfig)
    optim: SROptimConfig = field(default_factory=SROptimConfig)
    ema_decay: float = 0.999  # official ema_decay; the EMA net is used for validation and export
    ema_warmup: bool = True  # decay min(ema_decay, (1+n)/(10+n)) so short runs are not dominated by the init
    lq_source: LQSource = LQSource.downsample  # downsample (bicubic from the ground truth) | base_model
    base_checkpoint: Optional[str] = None  # mp-lightning base-model checkpoint for lq_source=base_model
    degradation: SRDegradationConfig = field(default_factory=SRDegradationConfig)
    bicubic_skip: bool = False  # predict a residual over bicubic upsampling, starting at 0 (not official; tiny CPU runs)
    init_gfpgan: Optional[str] = None  # GFPGAN v1.3 BasicSR file: non-strict init, as the official training
    chunk: int = 16  # frames per chunk of `upscale_clip` (official test chunk)
    chunk_overlap: int = 4  # frames shared by consecutive chunks, cross-faded


# ----------------------------------------------------------------------------------------------------------
# the stage


class SuperResolutionStage(Stage):
    """Temporal SR stage. forward(batch) -> {"prediction": (B, T, 3, H, W) in [0, 1] (EMA net unless training),
    "lq": (B, T, 3, H/2, W/2) in [0, 1]}. The batch needs `frames` (B, T, 3, H, W) in [0, 1] (the ground truth;
    with `lq` given it is only used for its size) or `lq` alone."""

    lr_interval = "step"  # the schedulers step in training_step

    Config = SRStageConfig

    def __init__(self, config: dict, landmark_spec: dict | None = None):
        super().__init__(config, landmark_spec)
        hp = self.hp
        if hp.lq_source == "base_model" and not hp.base_checkpoint:
            raise ConfigError("model.lq_source=base_model needs model.base_checkpoint=PATH (a trained base-model checkpoint)")
        data_size = (config.get("data") or {}).get("image_size")
        if data_size is not None and int(data_size) != hp.net.out_size:
            raise ConfigError(f"SR stage: data.image_size ({data_size}) must equal model.net.out_size "
                              f"({hp.net.out_size}); the LQ input is half of it")
        self.automatic_optimization = False
        self.generator = TemporalSRGenerator(hp.net)
        if hp.init_gfpgan:
            init_from_gfpgan(self.generator, hp.init_gfpgan)
        elif hp.bicubic_skip:
            # zero RGB heads: the residual starts at 0, i.e. the stage starts as exactly bicubic upsampling
            decoder = self.generator.stylegan_decoder
            with torch.no_grad():
                for head in [decoder.to_rgb1, *decoder.to_rgbs]:
                    head.modulated_conv.weight.zero_()
        # kept for the official layout, never used by the forward: frozen, so DDP waits for no gradient of theirs
        for p in self.generator.parameters_outside_forward():
            p.requires_grad_(False)
        self.ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        self._ema_updates_seen: int | None = None  # host copy of `ema_updates` (no device sync per step)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        if hp.losses.perceptual or hp.losses.style:
            self.perceptual = SRPerceptualStyleLoss(hp.perceptual.layer_weights, hp.perceptual.pretrained)
        else:
            self.perceptual = None
        self.discriminator = PatchDiscriminator(hp.gan.channels, hp.gan.num_downs) if hp.losses.gan > 0 else None
        self._base: list = []  # the frozen base model (a plain list: it stays out of this stage's state dict)

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def official_config(cls, net_config: TemporalSRConfig | None = None, **model: Any) -> dict:
        """A full experiment dict with the official SR settings around `net_config`."""
        from dataclasses import asdict

        net_config = net_config or TemporalSRConfig()
        return {
            "stage": "sr",
            "name": "metaportrait_sr_imported",
            "data": {"image_size": net_config.out_size, "mode": "windows"},
            "model": {"net": asdict(net_config), **model},
        }

    @classmethod
    def from_generator(cls, net: TemporalSRGenerator, **options: Any) -> "SuperResolutionStage":
        """A stage with the official config around an existing (e.g. imported) network; its weights go to both
        the generator and the EMA copy. `options` are `model:` overrides (e.g. perceptual={"pretrained": False})."""
        options.setdefault("perceptual", {"pretrained": False})  # the VGG is only needed to train, not to import
        stage = cls(config=cls.official_config(net.config, **options))
        with torch.no_grad():
            stage.generator.load_state_dict(net.state_dict())
            stage.ema.load_state_dict(net.state_dict())
        return stage.eval()

    # --- inputs ---------------------------------------------------------------------------------------
    @property
    def lq_size(self) -> int:
        return self.hp.net.out_size // 2

    def base_model(self):
        if not self._base:
            from mp_lightning.stages.base import load_stage

            base = load_stage(self.hp.base_checkpoint, map_location=self.device)
            base.requires_grad_(False)
            self._base.append(base)
        return self._base[0]

    def _degrade(self, lq: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        d = self.hp.degradation

        def draw(lo_hi):
            lo, hi = float(lo_hi[0]), float(lo_hi[-1])
            return lo + (hi - lo) * torch.rand((), generator=generator).item()

        out = []
        for frame_clip in lq:  # one draw per clip: the degradation is constant over a window, as in a video
            sigma, std, quality = draw(d.blur_sigma), draw(d.noise_std), draw(d.jpeg_quality)
            x = gaussian_blur(frame_clip, sigma / 2)  # sigma is in HR pixels
            if std > 0:
                noise = torch.randn(x.shape, generator=generator).to(x)
                x = (x + std * noise).clamp(0, 1)
            out.append(jpeg_like(x, quality))
        return torch.stack(out)

    def make_lq(self, frames: torch.Tensor, batch: dict | None = None) -> torch.Tensor:
        """Low-quality clips (B, T, 3, h, w) in [0, 1], h = out_size / 2, from ground-truth clips (B, T, 3, H, W)."""
        hp = self.hp
        small = bicubic(frames, self.lq_size)
        if hp.lq_source == "base_model":
            return self._base_model_lq(small, batch or {})
        d = hp.degradation
        degrade = any(max(r) > 0 for r in (d.blur_sigma, d.noise_std)) or min(d.jpeg_quality) < 100
        if degrade and (self.training or d.on_validation):
            gen = None if self.training else torch.Generator().manual_seed(d.seed)
            small = self._degrade(small, gen)
        return small

    @torch.no_grad()
    def _base_model_lq(self, small: torch.Tensor, batch: dict) -> torch.Tensor:
        """Every frame re-animated by the base model from the window's first frame (at LQ size)."""
        base = self.base_model()
        b, t = small.shape[:2]
        landmarks = batch.get("frames_landmarks")
        base_batch = {
            "source": small[:, :1].expand(-1, t, -1, -1, -1).reshape(b * t, *small.shape[2:]),
            "driving": small.reshape(b * t, *small.shape[2:]),
        }
        if landmarks is not None:
            base_batch["source_landmarks"] = landmarks[:, :1].expand(-1, t, -1, -1).reshape(b * t, *landmarks.shape[2:])
            base_batch["driving_landmarks"] = landmarks.reshape(b * t, *landmarks.shape[2:])
        was_training = base.training
        base.eval()
        pred = base(base_batch)["prediction"].clamp(0, 1)
        base.train(was_training)
        if pred.shape[-1] != self.lq_size:
            pred = bicubic(pred, self.lq_size)
        return pred.reshape(b, t, *pred.shape[1:])

    # --- forward --------------------------------------------------------------------------------------
    def run_net(self, net: TemporalSRGenerator, lq: torch.Tensor) -> torch.Tensor:
        """Raw network output (B, T, 3, 2h, 2w), not clamped; with `bicubic_skip` a residual over bicubic."""
        out = net(lq)
        if self.hp.bicubic_skip:
            out = out - 0.5 + bicubic(lq, out.shape[-1])
        return out

    def forward(self, batch: dict) -> dict:
        lq = batch.get("lq")
        if lq is None:
            lq = self.make_lq(batch["frames"], batch)
        net = self.generator if self.training else self.ema
        return {"prediction": self.run_net(net, lq).clamp(0, 1), "lq": lq}

    @torch.no_grad()
    def upscale_clip(self, frames: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """(T, 3, h, w) in [0, 1] with h = out_size / 2 -> (T, 3, 2h, 2w) in [0, 1], EMA net, overlapping chunks
        of `model.chunk` frames cross-faded over `model.chunk_overlap` frames. Frames stay on the input's device
        between chunks; each chunk runs on the stage's device."""
        from mp_lightning.networks.chunked_inference import chunked_temporal_inference

        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"upscale_clip expects frames (T, 3, h, w), got {tuple(frames.shape)}")
        if frames.shape[-1] != self.lq_size:
            frames = bicubic(frames, self.lq_size)
        bar = None
        callback: Optional[Callable[[int, int], None]] = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=frames.shape[0], desc="super-resolution", unit="frame")

            def callback(done: int, total: int) -> None:
                bar.update(done - bar.n)

        def fn(chunk: torch.Tensor) -> torch.Tensor:
            return self.run_net(self.ema, chunk.to(self.device)).clamp(0, 1)

        try:
            out = chunked_temporal_inference(fn, frames, chunk=self.hp.chunk, overlap=min(self.hp.chunk_overlap, self.hp.chunk - 1),
                                             output_device=frames.device, progress=callback)
        finally:
            if bar is not None:
                bar.close()
        return out

    # --- training -------------------------------------------------------------------------------------
    def losses(self, pred: torch.Tensor, gt: torch.Tensor) -> dict:
        """Generator losses of raw predictions vs ground truth, both (B, T, 3, H, W)."""
        w = self.hp.losses
        p, g = pred.flatten(0, 1), gt.flatten(0, 1)
        out = {"l1": F.l1_loss(p, g)}
        total = w.l1 * out["l1"]
        if self.perceptual is not None:
            perc, style = self.perceptual(p, g)
            out["perceptual"], out["style"] = perc, style
            total = total + w.perceptual * perc + w.style * style
        if self.discriminator is not None:
            out["gan"] = F.softplus(-call_frozen(self.discriminator, p)).mean()
            total = total + w.gan * out["gan"]
        out["loss"] = total
        return out

    def training_step(self, batch: dict, batch_idx: int):
        gt = batch["frames"]
        with torch.no_grad():
            lq = self.make_lq(gt, batch)
        pred = self.run_net(self.generator, lq)
        opt = self.optimizers()
        losses = self.losses(pred, gt)
        total = losses["loss"]
        if self.discriminator is not None:
            real = self.discriminator(gt.flatten(0, 1))
            fake = self.discriminator(pred.detach().flatten(0, 1))
            losses["discriminator"] = F.softplus(-real).mean() + F.softplus(fake).mean()
            total = total + losses["discriminator"]
        # one backward, one Adam with a group per network: the generator's GAN term sees the discriminator
        # through detached weights (`losses`), the discriminator's terms a detached prediction
        opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        opt.step()
        self.lr_schedulers().step()
        self.update_ema()
        self.log_losses(losses, batch_size=gt.shape[0])
        return losses["loss"]

    @torch.no_grad()
    def update_ema(self) -> None:
        if self._ema_updates_seen is None:
            self._ema_updates_seen = int(self.ema_updates.item())  # once: the counter may come from a checkpoint
        n = self._ema_updates_seen
        decay = self.hp.ema_decay
        if self.hp.ema_warmup:
            decay = min(decay, (1 + n) / (10 + n))
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self.generator.parameters()], 1 - decay)
        for e, b in zip(self.ema.buffers(), self.generator.buffers()):
            e.copy_(b)
        self.ema_updates += 1
        self._ema_updates_seen = n + 1

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._ema_updates_seen = None

    def configure_optimizers(self):
        o = self.hp.optim
        steps = o.cosine_steps
        if not steps:
            trainer = getattr(self, "_trainer", None)
            max_steps = trainer.max_steps if trainer is not None else -1
            steps = max_steps if max_steps and max_steps > 0 else (int(trainer.estimated_stepping_batches) if trainer else 1)
        steps = max(int(steps), 1)
        groups = [{"params": [p for p in self.generator.parameters() if p.requires_grad], "lr": o.lr,
                   "name": "generator", "clip_group": "generator"}]
        floor = o.eta_min / o.lr if o.lr > 0 else 0.0

        def cosine(step: int) -> float:  # CosineAnnealingLR's curve as a factor of the base lr
            return floor + (1 - floor) * (1 + math.cos(math.pi * min(step, steps) / steps)) / 2

        factors = [cosine]
        if self.discriminator is not None:
            groups.append({"params": list(self.discriminator.parameters()), "lr": self.hp.gan.lr,
                           "name": "discriminator", "clip_group": "discriminator"})
            factors.append(lambda step: 1.0)  # the discriminator keeps its lr
        opt = torch.optim.Adam(groups, betas=tuple(o.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factors)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- validation -----------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """The prediction, and bicubic upsampling of the same LQ input as a variant: `MetricsCallback` scores
        both (`val/psnr`, `val/bicubic/psnr`, `val/warp_error`, `val/bicubic/warp_error`, ...)."""
        out = self(batch)
        baseline = bicubic(out["lq"], batch["frames"].shape[-1])
        return {**detached(out), "variants": {"bicubic": {"prediction": baseline.detach()}}}
