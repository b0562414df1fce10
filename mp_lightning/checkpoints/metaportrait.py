"""Official MetaPortrait base checkpoint (`ckpt_base.pth.tar`) -> our networks / `RefineStage`.

The official file is a dict with `generator` (and usually `discriminator`, optimiser states, `epoch`).
The generator state dict maps one to one onto `MetaPortraitGenerator` (official 256 config); both the
spectral-norm layout (the released checkpoint) and the `--remove_sn` layout (meta-training checkpoints)
are detected from the keys. Tensors stored as float16 views of shared pools (the golden files) are copied
into independent float32 tensors before loading.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch

from mp_lightning.checkpoints import register_converter
from mp_lightning.errors import CheckpointError
from mp_lightning.stages.refine import RefineStage
from mp_lightning.state_dicts import list_keys, load_strict, own_copies, read_checkpoint, strip_ddp_prefix
from mp_lightning.networks.discriminator import MultiScaleDiscriminator
from mp_lightning.networks.metaportrait import MetaPortraitGenerator, MetaPortraitNetConfig

__all__ = [
    "read_official_checkpoint",
    "detect_spectral_norm",
    "official_discriminator",
    "load_official_generator",
    "convert_metaportrait",
]

def _clean(sd: Mapping) -> Dict[str, torch.Tensor]:
    return own_copies(strip_ddp_prefix(sd))


def read_official_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, torch.Tensor]], dict]:
    """(generator state dict, discriminator state dict or None, other top-level entries) from the file.

    A bare generator state dict is accepted too.
    """
    blob = read_checkpoint(path)
    if "generator" in blob:
        gen = _clean(blob["generator"])
        disc = _clean(blob["discriminator"]) if isinstance(blob.get("discriminator"), Mapping) else None
        rest = {k: v for k, v in blob.items() if k not in ("generator", "discriminator") and not k.startswith("optimizer")}
    elif blob and any(str(k).startswith(("SPDAE_G.", "ladder_network.", "module.")) for k in blob):
        gen, disc, rest = _clean(blob), None, {}
    else:
        raise CheckpointError(
            f"{path}: not a MetaPortrait base checkpoint: no 'generator' entry (top-level keys: {list_keys(sorted(map(str, blob)))})"
        )
    return gen, disc, rest


def detect_spectral_norm(state: Mapping[str, torch.Tensor]) -> bool:
    """True for the released layout (`..._orig/_u/_v` keys), False for the `--remove_sn` layout."""
    has_u = any(k.endswith("weight_u") for k in state)
    has_plain_ladder = "ladder_network.layer1.0.weight" in state
    if has_u and has_plain_ladder:
        raise CheckpointError("checkpoint mixes spectral-norm and plain keys in the generator")
    return has_u


def infer_config(state: Mapping[str, torch.Tensor]) -> MetaPortraitNetConfig:
    """The official config, with the spectral-norm switch and identity size read from the weights."""
    cfg = MetaPortraitNetConfig(spectral_norm=detect_spectral_norm(state))
    w = state.get("SPDAE_G.conv1.weight_orig", state.get("SPDAE_G.conv1.weight"))
    if w is not None:
        cfg.identity_dim = int(w.shape[0])
    return cfg


def official_discriminator() -> MultiScaleDiscriminator:
    """MetaPortrait's discriminator: scales [1], block_expansion 32, max 512, 4 blocks, no SN, no kp."""
    return MultiScaleDiscriminator(scales=(1,), block_expansion=32, max_features=512, num_blocks=4, sn=False, use_kp=False)


def load_official_generator(path, load_discriminator: bool = True):
    """Read an official base checkpoint.

    Returns (generator in eval mode, discriminator or None, info dict). The generator is a
    `MetaPortraitGenerator` with the official 256 config, spectral norm on or off as the file has it.
    """
    gen_sd, disc_sd, rest = read_official_checkpoint(path)
    cfg = infer_config(gen_sd)
    generator = MetaPortraitGenerator(cfg)
    load_strict(generator, gen_sd, f"{path} ['generator']")
    generator.eval()
    discriminator = None
    if load_discriminator and disc_sd is not None:
        discriminator = official_discriminator()
        load_strict(discriminator, disc_sd, f"{path} ['discriminator']")
        discriminator.eval()
    info = {
        "family": "metaportrait",
        "source": str(path),
        "variant": "spectral_norm" if cfg.spectral_norm else "remove_sn",
        "generator_keys": len(gen_sd),
        "generator_parameters": sum(p.numel() for p in generator.parameters()),
        "discriminator": "loaded" if discriminator is not None else "absent",
        "identity_dim": cfg.identity_dim,
        "epoch": rest.get("epoch"),
    }
    return generator, discriminator, info


def official_stage_config(spectral_norm: bool = True, identity_dim: int = 256, perceptual_pretrained: bool = False) -> dict:
    """The whole experiment config of a `RefineStage` holding the official 256 model, composed from
    `experiments/metaportrait/official_256.yaml` (precomputed 256-d identity, official669 landmarks,
    released-code losses: no identity loss), so the checkpoint carries data and metric settings too."""
    from omegaconf import OmegaConf

    from mp_lightning.config.compose import compose
    from mp_lightning.io.paths import experiments_dir

    name = "official_256.yaml" if spectral_norm else "official_256_remove_sn.yaml"
    cfg = compose(experiments_dir() / "metaportrait" / name, [
        f"model.net.identity_dim={identity_dim}",
        f"model.perceptual.pretrained={str(bool(perceptual_pretrained)).lower()}",
    ])
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


@register_converter("metaportrait")
def convert_metaportrait(path, **options):
    """`mp-lightning import-checkpoint metaportrait ckpt_base.pth.tar`: (RefineStage, info).

    options: `perceptual_pretrained` (bool, default False: the VGG weights are only needed to train).
    """
    generator, discriminator, info = load_official_generator(path)
    config = official_stage_config(generator.config.spectral_norm, generator.config.identity_dim,
                                   bool(options.get("perceptual_pretrained", False)))
    stage = RefineStage(config)
    load_strict(stage.generator, generator.state_dict(), f"{path} ['generator']")
    if discriminator is not None:
        load_strict(stage.discriminator, discriminator.state_dict(), f"{path} ['discriminator']")
    info["stage"] = type(stage).__name__
    return stage.eval(), info
