"""PIRender baseline (PIRenderer, ICCV 2021) as a stage: same data, callbacks and metrics as MetaPortrait.

The official recipe (`trainers/face_trainer.py`, `config/face.yaml`; BASELINES.md 2.6):
* every pairs batch is used in both directions: images [source, driving] driven by the descriptors
  [driving, source] towards the targets [driving, source];
* phase 1 (`warp_steps`, officially 200k iterations): only the mapping and warping nets train, with a
  VGG19 perceptual loss (relu1_1 ... relu5_1, 4 bilinear x0.5 scales, weight 2.5) on the warped image;
* phase 2: the full generator with the warp loss plus the same perceptual loss and a Gram style loss
  (full scale, x250) on the final image (weight 4); the Adam optimiser is re-created at the switch
  (here: a second Adam over every trainable parameter, untouched until then, so resuming keeps both);
* Adam lr 1e-4, betas (0.5, 0.999); an EMA copy of the generator (decay 0.5^(32/10000) per step) is
  used for validation, evaluation and export. The official StepLR stays bound to the first optimiser,
  so the second phase is never decayed; `optim.lr_step_size` (default none) adds a decay.

Inputs: `source` (B, 3, H, W) in [0, 1] and `driving_semantics` (B, 73, 2r+1) motion descriptor windows
(`data.semantics=true`; see `datamodules.semantics`); training also needs `driving` and
`source_semantics`. The model records the descriptor kind it expects (`model.descriptor`) and refuses
batches of another kind. Official weights: `mp-lightning import-checkpoint pirender FILE --out X.ckpt`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from mp_lightning.errors import ConfigError, DataError
from mp_lightning.networks.pirender import PIRenderGenerator, PIRenderNetConfig
from mp_lightning.stages.base import NonFiniteGrads, Stage, load_init_weights, trainable

OFFICIAL_EMA_DECAY = 0.5 ** (32 / 10000)  # imaginaire model average: half-life of 10k images at batch 32


@dataclass
class PIRenderPerceptualConfig:
    pretrained: bool = True  # ImageNet VGG19 (`mp-lightning weights`); false = random, tests only
    num_scales: int = 4  # image pyramid of bilinear x0.5 steps (official)
    layer_weights: List[float] = field(default_factory=lambda: [1.0] * 5)  # relu1_1 ... relu5_1


@dataclass
class PIRenderLossWeights:
    warp: float = 2.5  # perceptual loss of the warped image (official weight_perceptual_warp)
    final: float = 4.0  # perceptual (+ style) loss of the final image (official weight_perceptual_final)
    style: float = 250.0  # Gram style loss at full scale, relative to the final perceptual loss (official)


@dataclass
class PIRenderOptimConfig:
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    lr_step_size: Optional[int] = None  # steps between lr x lr_gamma; None = official behaviour (never decays)
    lr_gamma: float = 0.2
    grad_clip: float = 0.0  # gradient-norm clip after AMP unscaling; official: none
    nonfinite_grads: NonFiniteGrads = NonFiniteGrads.skip  # a step with NaN/inf gradients is skipped and counted


@dataclass
class PIRenderStageConfig:
    net: PIRenderNetConfig = field(default_factory=PIRenderNetConfig)
    descriptor: str = "deep3dfacerecon"  # kind of motion descriptors the weights expect (ROOT/semantics.json)
    warp_steps: int = 200_000  # warp-only steps before the full generator trains (official pretrain_warp_iteration)
    perceptual: PIRenderPerceptualConfig = field(default_factory=PIRenderPerceptualConfig)
    losses: PIRenderLossWeights = field(default_factory=PIRenderLossWeights)
    optim: PIRenderOptimConfig = field(default_factory=PIRenderOptimConfig)
    ema: bool = True  # validation, evaluation and export use the EMA generator
    ema_decay: float = OFFICIAL_EMA_DECAY
    init_from: Optional[str] = None  # start from this checkpoint's weights (any mp-lightning checkpoint)


class PIRenderPerceptualLoss(nn.Module):
    """Official `loss/perceptual.py` for VGG19: forward(pred, target (B, 3, H, W) in [0, 1], style=False) ->
    (sum over scales and layers of w_l * mean|phi_l(pred_s) - phi_l(target_s)|, the Gram-matrix L1 of the
    full scale summed over layers (0 unless `style`)). Scales are successive bilinear x0.5 downsamplings."""

    def __init__(self, num_scales: int = 4, layer_weights=(1.0,) * 5, pretrained: bool = True):
        super().__init__()
        from mp_lightning.networks.perceptual import VGG_SLICES, Vgg19Features

        if len(layer_weights) != len(VGG_SLICES):
            raise ConfigError(f"model.perceptual.layer_weights needs {len(VGG_SLICES)} values, got {len(layer_weights)}")
        self.num_scales = num_scales
        self.layer_weights = [float(w) for w in layer_weights]
        self.vgg = Vgg19Features(pretrained=pretrained)

    @staticmethod
    def gram(x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        f = x.reshape(b, c, h * w)
        return f.bmm(f.transpose(1, 2)) / (c * h * w)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, style: bool = False):
        perceptual = pred.new_zeros(())
        style_loss = pred.new_zeros(())
        for scale in range(self.num_scales):
            if scale:
                pred = F.interpolate(pred, scale_factor=0.5, mode="bilinear", align_corners=False)
                target = F.interpolate(target, scale_factor=0.5, mode="bilinear", align_corners=False)
            if min(pred.shape[-2:]) < 16:
                raise ConfigError(f"model.perceptual.num_scales={self.num_scales}: scale {scale} is "
                                  f"{tuple(pred.shape[-2:])} px, VGG19 needs >= 16 px; use fewer scales")
            feats = self.vgg(pred)
            with torch.no_grad():
                target_feats = self.vgg(target)
            for w, a, b in zip(self.layer_weights, feats, target_feats):
                if w:
                    perceptual = perceptual + w * F.l1_loss(a, b)
                if style and scale == 0:
                    style_loss = style_loss + F.l1_loss(self.gram(a), self.gram(b))
        return perceptual, style_loss


class PIRenderStage(Stage):
    """PIRender on `pairs` batches with descriptors. forward(batch) -> prediction (B, 3, H, W) in [0, 1]
    (clamped), prediction_raw (the official `fake_image` in [-1, 1], unclamped; the warped image before the
    editing net has trained), deformed (warped source in [0, 1]), flow_field (B, 2, h, w) in pixels of the
    flow map, descriptor (B, D, 1)."""

    lr_interval = "step"  # the schedulers step in training_step

    Config = PIRenderStageConfig

    def __init__(self, config: dict, landmark_spec: dict | None = None):
        super().__init__(config, landmark_spec)
        from datamodules.semantics import KINDS

        hp = self.hp
        if hp.descriptor not in KINDS:
            raise ConfigError(f"config key 'model.descriptor': '{hp.descriptor}' is not one of {', '.join(KINDS)}")
        data = config.get("data") or {}
        if data.get("semantics") and data.get("semantic_radius", 13) != hp.net.semantic_radius:
            raise ConfigError(f"config key 'data.semantic_radius' is {data.get('semantic_radius')} but "
                              f"'model.net.semantic_radius' is {hp.net.semantic_radius}: set both to the same value")
        self.automatic_optimization = False
        self.generator = PIRenderGenerator(hp.net)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        # 1 once the editing net trains (or imported weights have it): until then the prediction is the warp
        self.register_buffer("editing_trained", torch.zeros((), dtype=torch.long))
        self._editing_trained_host: bool | None = None
        self._adapted = False  # the generator was adapted by `adaptation_loss` steps since the EMA copy was synced
        self.perceptual = PIRenderPerceptualLoss(hp.perceptual.num_scales, hp.perceptual.layer_weights,
                                                 hp.perceptual.pretrained)
        if hp.init_from:
            load_init_weights(self, hp.init_from, prefixes=("generator.", "generator_ema.", "editing_trained"))

    @classmethod
    def from_generator(cls, generator: PIRenderGenerator, descriptor: str = "deep3dfacerecon",
                       config: dict | None = None) -> "PIRenderStage":
        """A stage holding the given (e.g. imported official) weights in both its generator and its EMA copy,
        with the editing net marked trained. `config`: a full experiment dict; by default a minimal one."""
        net = OmegaConf.to_container(OmegaConf.structured(generator.config))
        if config is None:
            config = {"stage": "pirender", "name": "pirender_imported",
                      "data": {"image_size": 256, "semantics": True, "augment_flip": False,
                               "semantic_radius": generator.config.semantic_radius},
                      "model": {"net": net, "descriptor": descriptor, "perceptual": {"pretrained": False}}}
        stage = cls(config)
        stage.generator.load_state_dict(generator.state_dict())
        stage.generator_ema.load_state_dict(generator.state_dict())
        stage.mark_editing_trained()
        return stage.eval()

    # --- inputs ---------------------------------------------------------------------------------------
    def check_semantics(self, batch: dict, *keys: str) -> None:
        for key in keys:
            if key not in batch:
                raise DataError(f"PIRender is driven by motion descriptors but the batch has no '{key}': set "
                                f"data.semantics=true and give every clip a <clip>.semantics.npy")
        kinds = batch.get("semantics_kind")
        if kinds:
            other = sorted({k for k in ([kinds] if isinstance(kinds, str) else kinds) if k != self.hp.descriptor})
            if other:
                raise DataError(f"this PIRender model expects '{self.hp.descriptor}' motion descriptors but the data "
                                f"holds '{other[0]}' descriptors (ROOT/semantics.json): they are different descriptors; "
                                f"use data made by the same extractor or a model trained on '{other[0]}'")

    # --- inference ------------------------------------------------------------------------------------
    @property
    def uses_editing(self) -> bool:
        if self._editing_trained_host is None:
            self._editing_trained_host = bool(self.editing_trained)  # one host read, then cached
        return self._editing_trained_host

    def mark_editing_trained(self) -> None:
        self.editing_trained.fill_(1)
        self._editing_trained_host = True

    def _load_from_state_dict(self, *args, **kwargs):
        self._editing_trained_host = None
        return super()._load_from_state_dict(*args, **kwargs)

    def render(self, net: PIRenderGenerator, source: torch.Tensor, semantics: torch.Tensor, full: bool) -> dict:
        out = net(source * 2 - 1, semantics.to(source.dtype), stage=None if full else "warp")
        raw = out["fake_image"] if full else out["warp_image"]
        return {"prediction": ((raw + 1) / 2).clamp(0, 1), "prediction_raw": raw,
                "deformed": (out["warp_image"] + 1) / 2, "flow_field": out["flow_field"],
                "descriptor": out["descriptor"], "warp_raw": out["warp_image"]}

    def inference_net(self) -> PIRenderGenerator:
        if not self.hp.ema or self.training:
            return self.generator
        self._sync_ema_if_adapted()
        return self.generator_ema

    def _sync_ema_if_adapted(self) -> None:
        # after `adaptation_loss` steps (personalization, Reptile) the adapted generator is the model: the EMA
        # copy, which inference and checkpoints use, takes its weights
        if self._adapted:
            self.generator_ema.load_state_dict(self.generator.state_dict())
            self._adapted = False

    def state_dict(self, *args, **kwargs):
        self._sync_ema_if_adapted()
        return super().state_dict(*args, **kwargs)

    @property
    def cross_identity_protocol(self) -> str:
        return ("driving descriptor windows as given (absolute; the official --cross_id also rescales the crop "
                "ratio to the source's, which `animate` does)")

    def forward(self, batch: dict) -> dict:
        self.check_semantics(batch, "driving_semantics")
        out = self.render(self.inference_net(), batch["source"], batch["driving_semantics"], self.uses_editing)
        out.pop("warp_raw")
        return out

    animation_keys = ("driving_semantics",)

    def animation_inputs(self, source=None, driving=None, driving_semantics=None, source_semantics=None,
                         source_frame: int = 0) -> dict:
        """Extra `animate` arguments: the driving clip's descriptors (`driving_semantics`, a (T, 73) .npy, default
        `<driving>.semantics.npy` beside the clip) and, when the source has descriptors, its frame's row
        (cross-identity crop adaptation). Without a file, a model of the mediapipe stand-in extracts them on the
        fly with the PCA of its training data root (`semantics_mediapipe.npz`)."""
        from pathlib import Path

        from datamodules.semantics import semantics_path_for

        extra = {}
        path = Path(driving_semantics) if driving_semantics else (semantics_path_for(driving) if driving else None)
        if path is not None and path.is_file():
            extra["driving_semantics"] = torch.from_numpy(_read_semantics(path))
        elif driving_semantics is None and driving is not None and self.hp.descriptor == "mediapipe":
            extra["driving_semantics"] = torch.from_numpy(self._extract(driving))
        else:
            raise DataError(f"PIRender needs the driving clip's motion descriptors: {path} not found "
                            f"(pass --driving-semantics FILE, a float32 (T, 73) .npy of '{self.hp.descriptor}' "
                            f"descriptors)")
        src = Path(source_semantics) if source_semantics else (semantics_path_for(source) if source else None)
        if src is not None and src.is_file():
            extra["source_semantics"] = torch.from_numpy(_read_semantics(src)[source_frame])
        elif source is not None and self.hp.descriptor == "mediapipe":
            extra["source_semantics"] = torch.from_numpy(self._extract(source, source_frame)[0])
        return extra

    def _extract(self, path, frame: int | None = None) -> np.ndarray:
        """mediapipe stand-in descriptors of a video (every frame) or of one frame / an image."""
        from pathlib import Path

        from mp_lightning.preprocess.semantics import PCA_FILE, descriptors_for_frames

        root = (self.experiment_config.get("data") or {}).get("root")
        path = Path(path)
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            import cv2

            frames = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)[None]
        else:
            from mp_lightning.io.video import read_video

            frames = read_video(path)
            frames = frames[frame:frame + 1] if frame is not None else frames
        return descriptors_for_frames(frames, Path(root or ".") / PCA_FILE)

    def clip_inputs(self, clip: dict, source_index: int, driving_indices) -> tuple[dict, dict]:
        """For `personalize`: descriptor windows of a loaded clip (`clip["semantics"]` (F, 73)) as extra batch
        keys for pairs (source_index -> driving_indices) and as `animate` arguments for those driving frames."""
        from datamodules.semantics import semantic_window

        if "semantics" not in clip:
            raise DataError("PIRender personalization needs the clip's motion descriptors: <clip>.semantics.npy "
                            "beside the video (float32 (F, 73))")
        sem = clip["semantics"].numpy()
        r = self.hp.net.semantic_radius
        driving = torch.from_numpy(np.stack([semantic_window(sem, int(i), r) for i in driving_indices]))
        source = torch.from_numpy(semantic_window(sem, int(source_index), r))
        batch = {"source_semantics": source.unsqueeze(0).expand(len(driving), -1, -1), "driving_semantics": driving}
        return batch, {"driving_semantics": driving}

    @torch.no_grad()
    def animate(self, source, driving=None, driving_landmarks=None, source_landmarks=None, driving_semantics=None,
                source_semantics=None, batch_size: int = 8, progress: bool = False, **_ignored) -> torch.Tensor:
        """(T, 3, H, W) predictions in [0, 1] for source (3, H, W) in [0, 1] and per-frame driving descriptors
        (T, 73) (windows are built here, indices clamped) or ready windows (T, 73, 2r+1). `driving` frames only set T when given; landmarks are
        not used. With `source_semantics` (73,) the driving crop ratio is rescaled to the source's, relative to
        the driving frame closest to the source in expression and angles (official `--cross_id`)."""
        from datamodules.semantics import ANGLES, CROP, EXPRESSION, semantic_windows

        if driving_semantics is None:
            raise DataError("PIRender animation needs the driving motion descriptors (driving_semantics, (T, 73))")
        sem = np.asarray(torch.as_tensor(driving_semantics, dtype=torch.float32).cpu().numpy()).copy()
        if sem.ndim == 3:  # ready windows
            return self._render_windows(source, torch.from_numpy(sem), batch_size, progress)
        if driving is not None and len(sem) < driving.shape[0]:
            raise DataError(f"{len(sem)} descriptor rows for {driving.shape[0]} driving frames")
        if driving is not None:
            sem = sem[: driving.shape[0]]
        if source_semantics is not None:
            src = torch.as_tensor(source_semantics, dtype=torch.float32).cpu().numpy()
            score = (0.3 * np.abs(sem[:, EXPRESSION] - src[EXPRESSION]).mean(1)
                     + 0.7 * np.abs(sem[:, ANGLES] - src[ANGLES]).mean(1))
            closest = int(np.argmin(score))
            sem[:, CROP.start] *= src[CROP.start] / sem[closest, CROP.start]
        return self._render_windows(source, torch.from_numpy(semantic_windows(sem, self.hp.net.semantic_radius)),
                                    batch_size, progress)

    def _render_windows(self, source, windows, batch_size: int, progress: bool) -> torch.Tensor:
        device = self.device
        source = source.reshape(1, *source.shape[-3:]).to(device)
        steps = range(0, len(windows), batch_size)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="animate", unit="batch")
        frames = []
        for start in steps:
            w = windows[start:start + batch_size].to(device)
            out = self.render(self.inference_net(), source.expand(len(w), -1, -1, -1), w, self.uses_editing)
            frames.append(out["prediction"].cpu())
        return torch.cat(frames)

    # --- training -------------------------------------------------------------------------------------
    def in_full_phase(self) -> bool:
        return self.global_step >= self.hp.warp_steps

    def losses(self, batch: dict, full: bool, net: PIRenderGenerator | None = None) -> dict:
        """Both directions of each pair; warp loss always, final perceptual + style loss in the full phase."""
        self.check_semantics(batch, "source_semantics", "driving_semantics")
        w = self.hp.losses
        images = torch.cat([batch["source"], batch["driving"]])
        semantics = torch.cat([batch["driving_semantics"], batch["source_semantics"]])
        targets = torch.cat([batch["driving"], batch["source"]])
        out = self.render(net or self.generator, images, semantics, full)
        warp_perceptual, _ = self.perceptual((out["warp_raw"] + 1) / 2, targets)
        terms = {"warp_perceptual": w.warp * warp_perceptual}
        if full:
            perceptual, style = self.perceptual((out["prediction_raw"] + 1) / 2, targets, style=bool(w.style))
            terms["final_perceptual"] = w.final * perceptual
            terms["style"] = w.final * w.style * style
        terms["loss"] = sum(terms.values())
        return terms

    def training_step(self, batch: dict, batch_idx: int):
        full = self.in_full_phase()
        if full and not self.uses_editing:
            self.mark_editing_trained()
        terms = self.losses(batch, full)
        loss = terms["loss"]
        if not full:
            # the editing net is outside the warp phase's graph; a zero-weighted term gives its parameters a
            # (zero) gradient so that DDP without find_unused_parameters has every gradient it waits for
            loss = loss + 0.0 * sum(p.sum() for p in trainable(self.generator.editing_net))
        opt_warp, opt_full = self.optimizers()
        opt = opt_full if full else opt_warp
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()  # clipping and the non-finite check run in `on_before_optimizer_step`
        self.update_ema()
        scheds = self.lr_schedulers()
        if scheds:
            (scheds[1] if full else scheds[0]).step()
        terms["phase"] = torch.tensor(float(full))
        self.log_losses(terms, batch_size=batch["source"].shape[0])
        return loss

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = self.hp.ema_decay
        torch._foreach_lerp_(list(self.generator_ema.parameters()),
                             [p.detach() for p in self.generator.parameters()], 1 - decay)

    # what Reptile (`stage: meta`) and `personalize` train: the whole generator, on its own loss
    def adaptation_param_groups(self, warp_lr_multiplier: float = 1.0) -> list[dict]:
        return [{"params": trainable(self.generator), "mult": 1.0, "name": "pirender"}]

    def adaptation_loss(self, batch: dict) -> torch.Tensor:
        full = self.uses_editing or self.in_full_phase()
        self._adapted = True
        return self.losses(batch, full)["loss"]

    def configure_optimizers(self):
        o = self.hp.optim
        betas = tuple(o.betas)
        warp = torch.optim.Adam([{"params": trainable(self.generator.warp_parameters()), "lr": o.lr,
                                  "name": "warp", "clip_group": "generator"}], betas=betas)
        # the official code builds a new Adam at the switch; this one is untouched until then
        full = torch.optim.Adam([{"params": trainable(self.generator), "lr": o.lr, "name": "generator",
                                  "clip_group": "generator"}], betas=betas)
        if not o.lr_step_size:
            return [warp, full]
        scheds = [torch.optim.lr_scheduler.StepLR(opt, o.lr_step_size, o.lr_gamma) for opt in (warp, full)]
        return [warp, full], [{"scheduler": s, "interval": "step"} for s in scheds]


def _read_semantics(path) -> np.ndarray:
    from datamodules.semantics import SEMANTICS_DIM

    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != SEMANTICS_DIM:
        raise DataError(f"{path}: motion descriptors must be (T, {SEMANTICS_DIM}) float32, got {tuple(arr.shape)}")
    return np.asarray(arr, dtype=np.float32)
