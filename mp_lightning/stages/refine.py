"""Stage 2 of MetaPortrait: identity-preserving refinement (the paper's "full" stage).

The warped source features, the occlusion map, gaze heatmaps and the landmark line images form a
label pyramid that conditions a SPADE generator, whose identity branch is an AdaIN driven by a
face-recognition embedding of the source; a learned attention mask fuses the two branches
("adaptive identity fusion"). Trained with the warp loss, a pyramid perceptual loss on the output,
eye and mouth losses inside landmark boxes, LSGAN with feature matching against a patch
discriminator, and the identity loss 1 - cos(ID(prediction), ID(source)).

The paper trains with the identity loss; the released code has it commented out. Both are one value
apart: `model.losses.identity=20` (paper, the configs' weight) or `model.losses.identity=0` (code).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch

from mp_lightning.choices import Choice
from mp_lightning.errors import ConfigError, DataError
from mp_lightning.losses.adversarial import feature_matching_loss, lsgan_discriminator_loss, lsgan_generator_loss
from mp_lightning.losses.identity import identity_loss
from mp_lightning.losses.regions import eye_loss, mouth_loss
from mp_lightning.stages.base import call_frozen, detached
from mp_lightning.stages.warp import MetaPortraitStage, WarpStageConfig


@dataclass
class RefineLossWeights:
    warp_perceptual: float = 1.0  # multiplies the perceptual config's per-layer weights (official: kept on)
    perceptual: float = 1.0  # on the refined prediction
    eye: float = 50.0
    mouth: float = 50.0
    generator_gan: float = 1.0  # LSGAN generator term
    feature_matching: float = 10.0  # per discriminator block
    discriminator_gan: float = 1.0
    identity: float = 20.0  # paper: on (20); released code: 0 (commented out)


class IdentitySource(Choice):
    facenet = "facenet"  # embed the source frame
    precomputed = "precomputed"  # the batch's source_identity (.identity.npy files)


class FaceAlign(Choice):
    center = "center"  # a fixed centre crop (differentiable)
    mtcnn = "mtcnn"  # MTCNN face boxes


@dataclass
class IdentityConfig:
    source: IdentitySource = IdentitySource.facenet  # facenet: embed the source frame | precomputed: .identity.npy
    pretrained: bool = True  # VGGFace2 weights (`mp-lightning weights`); false = random init, tests only
    align: FaceAlign = FaceAlign.center  # face crop before the embedding: center (differentiable) | mtcnn
    # facenet: when the data declares its .identity.npy files as this embedder's kind (ROOT/identity.json,
    # e.g. facenet-vggface2 512-d), condition on them (and use them as the identity loss's reference) instead
    # of embedding the source frame every step, as the official loader reads its precomputed ids. The files
    # hold a clip-level embedding (mean of 8 MTCNN-cropped frames), not the source frame's centre crop.
    reuse_precomputed: bool = True


@dataclass
class DiscriminatorConfig:
    scales: List[float] = field(default_factory=lambda: [1.0])
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 4
    spectral_norm: bool = False


@dataclass
class RefineStageConfig(WarpStageConfig):
    losses: RefineLossWeights = field(default_factory=RefineLossWeights)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    eye_pad: int = 3  # px around the eye box (official)
    mouth_pad: int = 5  # px around the mouth box (official)


class RefineStage(MetaPortraitStage):
    Config = RefineStageConfig
    # stage 2 starts from a stage-1 checkpoint: only the warping network is taken from it
    init_prefixes = ("generator.ladder_network.", "generator.dense_motion_network.")

    def __init__(self, config: dict, landmark_spec: dict | None = None):
        super().__init__(config, landmark_spec)
        from mp_lightning.networks.discriminator import MultiScaleDiscriminator

        hp = self.hp
        d = hp.discriminator
        self.discriminator = MultiScaleDiscriminator(
            scales=list(d.scales), block_expansion=d.block_expansion, max_features=d.max_features,
            num_blocks=d.num_blocks, sn=d.spectral_norm, num_channels=hp.net.num_channels,
        )
        if hp.identity.source == "facenet" and hp.net.identity_dim != 512:
            raise ConfigError(
                f"config key 'model.net.identity_dim' is {hp.net.identity_dim} but facenet embeddings are 512-d "
                f"(set model.net.identity_dim=512, or model.identity.source=precomputed for 256-d .identity.npy files)"
            )
        self.face_embedder = None
        self._identity_fallback_noted = False
        if hp.identity.source == "facenet" or hp.losses.identity > 0:
            from mp_lightning.networks.identity import FaceEmbedder

            self.face_embedder = FaceEmbedder(pretrained=hp.identity.pretrained, align=str(hp.identity.align))
        if not self.trains_discriminator:
            self.discriminator.requires_grad_(False)
        self.automatic_optimization = False

    @property
    def trains_discriminator(self) -> bool:
        return self.hp.losses.discriminator_gan > 0

    def source_inputs(self) -> tuple[str, ...]:
        return ("source_identity",) if self.hp.identity.source == "precomputed" else ()

    # --- forward ------------------------------------------------------------------------------------
    def source_identity(self, batch: dict) -> torch.Tensor:
        """(B, identity_dim) vector that conditions the refinement network's identity branch.

        precomputed: the batch's `source_identity` (<clip>.identity.npy), which must be identity_dim long.
        facenet: the batch's `source_identity` when the data declares it of this embedder's kind
        (`source_identity_kind`, from ROOT/identity.json) and `model.identity.reuse_precomputed` is on;
        otherwise facenet on the source frame. An embedding of another kind or size is never used.
        """
        return self._source_identity(batch)[0]

    def _source_identity(self, batch: dict) -> tuple[torch.Tensor, bool]:
        """(vector, whether it lives in the face embedder's space, so it can be the identity-loss reference)."""
        hp = self.hp
        embedder_kind = None if self.face_embedder is None else self.face_embedder.kind
        if hp.identity.source == "precomputed":
            if "source_identity" not in batch:
                raise ConfigError(
                    "model.identity.source=precomputed but the batch has no 'source_identity' "
                    "(the data needs <clip>.identity.npy files beside the clips)"
                )
            ident = batch["source_identity"]
            if ident.shape[-1] != hp.net.identity_dim:
                raise DataError(
                    f"the batch's 'source_identity' ({_identity_files(batch)}) is {ident.shape[-1]}-d but "
                    f"model.net.identity_dim is {hp.net.identity_dim}: these files are another embedding"
                )
            return ident, embedder_kind is not None and _declared_kinds(batch) == {embedder_kind}
        if hp.identity.reuse_precomputed and "source_identity" in batch:
            ident = batch["source_identity"]
            kinds = _declared_kinds(batch)
            if kinds == {embedder_kind}:
                if ident.shape[-1] != self.face_embedder.dim:
                    raise DataError(
                        f"the batch's 'source_identity' ({_identity_files(batch)}) is declared '{embedder_kind}' "
                        f"but is {ident.shape[-1]}-d, not {self.face_embedder.dim}: the files or the data root's "
                        f"identity.json are wrong"
                    )
                return ident, True
            self._note_identity_fallback(batch, kinds, embedder_kind)
        with torch.no_grad():
            return self.face_embedder(batch["source"]), True

    def _note_identity_fallback(self, batch: dict, kinds: set, embedder_kind: str) -> None:
        if self._identity_fallback_noted:
            return
        self._identity_fallback_noted = True
        from lightning.pytorch.utilities import rank_zero_warn

        what = f"declared {sorted(kinds)}" if kinds else "of undeclared kind (no identity.json in the data root)"
        rank_zero_warn(
            f"the batch's 'source_identity' ({_identity_files(batch)}) is {what}, not this embedder's "
            f"'{embedder_kind}' ({self.face_embedder.dim}-d): it is not used, facenet embeds the source frame "
            f"every step instead"
        )

    def forward(self, batch: dict) -> dict:
        batch = self.prepare(batch)
        out = self.warp(batch)
        identity, in_embedder_space = self._source_identity(batch)
        raw = self.generator.refine(
            batch["source"], out, identity, batch["source_line"], batch["driving_line"],
            batch["gaze_points"], batch["mouth_mask"],
        )
        if in_embedder_space:
            out["source_embedding"] = identity  # the identity loss's reference: no second facenet pass
        # the official generator's tanh output is compared directly with [0, 1] targets
        out["prediction_raw"] = raw
        out["prediction"] = raw.clamp(0, 1)
        return out

    # --- losses (paper section 3.2; official weights) ----------------------------------------------
    def generator_losses(self, batch: dict, out: dict, adversarial: bool = True,
                         real_features: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The generator's terms. The adversarial ones see the discriminator through detached weights, so their
        gradient reaches the generator only. `real_features`: the discriminator's features of the driving
        frames if already computed (feature matching reuses them)."""
        w = self.hp.losses
        pred, target = out["prediction_raw"], batch["driving"]
        pyramid = self.perceptual.pyramid
        pred_pyr, target_pyr = pyramid(pred), pyramid(target)
        terms = {
            "warp_perceptual": w.warp_perceptual * self.perceptual(out["deformed"], target),
            "perceptual": w.perceptual * self.perceptual.forward_pyramids(pred_pyr, target_pyr),
        }
        if w.eye > 0:
            terms["eye"] = w.eye * eye_loss(pred_pyr, target_pyr, batch["eye_mask"])
        if w.mouth > 0:
            terms["mouth"] = w.mouth * mouth_loss(pred_pyr, target_pyr, batch["mouth_mask"])
        if w.identity > 0:
            reference = out.get("source_embedding")
            if reference is None:
                with torch.no_grad():
                    reference = self.face_embedder(batch["source"])
            terms["identity"] = w.identity * identity_loss(self.face_embedder(pred), reference)
        if adversarial and (w.generator_gan > 0 or w.feature_matching > 0):
            fake = call_frozen(self.discriminator, pred)
            if w.generator_gan > 0:
                terms["gan"] = w.generator_gan * lsgan_generator_loss(fake)
            if w.feature_matching > 0:
                if real_features is None:
                    with torch.no_grad():
                        real_features = self.discriminator(target)
                weights = [w.feature_matching] * self.hp.discriminator.num_blocks
                terms["feature_matching"] = feature_matching_loss(detached(real_features), fake, weights)
        terms["loss"] = sum(terms.values())
        return terms

    def adaptation_param_groups(self, warp_lr_multiplier: float) -> list[dict]:
        # refinement network x1, warping network x warp_lr_multiplier (official inner_warplr_tune)
        return [
            {"params": list(self.generator.refine_parameters()), "mult": 1.0, "name": "refine"},
            {"params": list(self.generator.warp_parameters()), "mult": warp_lr_multiplier, "name": "warp"},
        ]

    def adaptation_loss(self, batch: dict) -> torch.Tensor:
        batch = self.prepare(batch)
        return self.generator_losses(batch, self(batch), adversarial=False)["loss"]

    def discriminator_losses(self, batch: dict, out: dict, real: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """LSGAN terms of the discriminator on the driving frames (`real`: its output there, if computed) and
        on the detached prediction."""
        real = self.discriminator(batch["driving"]) if real is None else real
        fake = self.discriminator(out["prediction_raw"].detach())
        loss = self.hp.losses.discriminator_gan * lsgan_discriminator_loss(real, fake)
        return {"discriminator": loss}

    # --- training -----------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int):
        opt = self.optimizers()
        batch = self.prepare(batch)
        out = self(batch)
        # the discriminator sees the driving frames once: its loss and the generator's feature matching share it
        real = self.discriminator(batch["driving"]) if self.trains_discriminator else None
        losses = self.generator_losses(batch, out, adversarial=True, real_features=real)
        total = losses["loss"]
        if self.trains_discriminator:
            losses.update(self.discriminator_losses(batch, out, real=real))
            total = total + losses["discriminator"]
        # One backward and one Adam over generator and discriminator groups: each network's terms reach only
        # its own weights (see `generator_losses`), which equals the official G-then-D steps (D's step uses
        # the prediction made before G moved), lets DDP reduce every parameter once per step, and lets a
        # GradScaler unscale and check all gradients before one update.
        opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        opt.step()  # clipping per network and the non-finite check run in `on_before_optimizer_step`
        self.log_losses(losses, batch_size=batch["source"].shape[0])
        return losses["loss"]

    def configure_optimizers(self):
        o = self.hp.optim
        groups = self.generator_param_groups()
        if self.trains_discriminator:
            groups.append({"params": list(self.discriminator.parameters()), "lr": o.discriminator_lr,
                           "name": "discriminator", "clip_group": "discriminator"})
        opt = self._adam(groups)
        return {"optimizer": opt, "lr_scheduler": self._scheduler(opt)}


def _declared_kinds(batch: dict) -> set:
    """The embedding kinds the data declares for the batch's `source_identity` (empty: undeclared)."""
    kinds = batch.get("source_identity_kind")
    if kinds is None:
        return set()
    return {kinds} if isinstance(kinds, str) else set(kinds)


def _identity_files(batch: dict) -> str:
    clips = batch.get("clip")
    if isinstance(clips, (list, tuple)) and clips:
        names = sorted(set(clips))
        more = f" and {len(names) - 2} more" if len(names) > 2 else ""
        return "from " + ", ".join(f"{c}.identity.npy" for c in names[:2]) + more
    return "key 'source_identity'"
