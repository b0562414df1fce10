"""Official MetaPortrait base checkpoint (`ckpt_base.pth.tar`) -> our networks / `RefineStage`.

The official file is a dict with `generator` (and usually `discriminator`, optimiser states, `epoch`).
The generator state dict maps one to one onto `MetaPortraitGenerator` (official 256 config); both the
spectral-norm layout (the released checkpoint) and the `--remove_sn` layout (meta-training checkpoints)
are detected from the keys. Tensors stored as float16 views of shared pools (the golden files) are copied
into independent float32 tensors before loading.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from mp_lightning.checkpoints import register_converter
from mp_lightning.errors import CheckpointError
from mp_lightning.networks.discriminator import MultiScaleDiscriminator
from mp_lightning.networks.metaportrait import MetaPortraitGenerator, MetaPortraitNetConfig

__all__ = [
    "read_official_checkpoint",
    "detect_spectral_norm",
    "load_checked",
    "official_discriminator",
    "load_official_generator",
    "convert_metaportrait",
]

_MODULE_PREFIX = "module."


def _listing(keys, limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def _clean(sd: Mapping) -> Dict[str, torch.Tensor]:
    """float32 copies with their own storage; a DDP `module.` prefix is dropped."""
    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v):
            continue
        if k.startswith(_MODULE_PREFIX):
            k = k[len(_MODULE_PREFIX):]
        # shared fp16 pool views must not alias each other once loaded: copy each one
        out[k] = v.float().clone() if v.is_floating_point() else v.clone()
    return out


def read_official_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, torch.Tensor]], dict]:
    """(generator state dict, discriminator state dict or None, other top-level entries) from the file.

    A bare generator state dict is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or a pickle needing arbitrary code
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({exc})") from exc
    if not isinstance(blob, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(blob).__name__}")
    if "generator" in blob:
        gen = _clean(blob["generator"])
        disc = _clean(blob["discriminator"]) if isinstance(blob.get("discriminator"), Mapping) else None
        rest = {k: v for k, v in blob.items() if k not in ("generator", "discriminator") and not k.startswith("optimizer")}
    elif blob and any(str(k).startswith(("SPDAE_G.", "ladder_network.", "module.")) for k in blob):
        gen, disc, rest = _clean(blob), None, {}
    else:
        raise CheckpointError(
            f"{path}: not a MetaPortrait base checkpoint: no 'generator' entry (top-level keys: {_listing(sorted(map(str, blob)))})"
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


def load_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict `load_state_dict` that raises `CheckpointError` naming missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched[:10]))
    if missing:
        problems.append(f"{len(missing)} missing keys: " + _listing(missing, 10))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: " + _listing(unexpected, 10))
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + " | ".join(problems))
    module.load_state_dict(dict(state), strict=True)


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
    load_checked(generator, gen_sd, f"{path} ['generator']")
    generator.eval()
    discriminator = None
    if load_discriminator and disc_sd is not None:
        discriminator = official_discriminator()
        load_checked(discriminator, disc_sd, f"{path} ['discriminator']")
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
    from mp_lightning.paths import experiments_dir

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
    try:
        from mp_lightning.stages.refine import RefineStage
    except ImportError as exc:  # the stage is the lead's; networks are usable without it
        raise NotImplementedError(
            "mp_lightning.stages.refine is not available yet; use "
            "mp_lightning.checkpoints.metaportrait.load_official_generator(path) for the bare networks"
        ) from exc
    config = official_stage_config(generator.config.spectral_norm, generator.config.identity_dim,
                                   bool(options.get("perceptual_pretrained", False)))
    stage = RefineStage(config)
    load_checked(stage.generator, generator.state_dict(), f"{path} ['generator']")
    if discriminator is not None:
        load_checked(stage.discriminator, discriminator.state_dict(), f"{path} ['discriminator']")
    info["stage"] = type(stage).__name__
    return stage.eval(), info
