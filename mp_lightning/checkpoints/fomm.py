"""Official FOMM checkpoints (`vox-cpk.pth.tar`, `vox-adv-cpk.pth.tar`) -> our FOMM networks.

The file is a plain `torch.save` dict (BASELINES.md 1.9): `kp_detector`, `generator`, usually
`discriminator`, three Adam states and `epoch`. Keys match `mp_lightning.networks.fomm` one to one.

grid_sample convention (BASELINES.md 1.4), chosen in this order:
1. the caller's `align_corners` argument;
2. a `grid_sample_align_corners` entry in the file (written by `export_official_fomm`, so a file
   exported from a model trained here keeps its convention);
3. otherwise True: the released checkpoints were trained on torch 1.0, whose `grid_sample` behaved
   like align_corners=True. (The golden data was produced by the official code on a modern torch, i.e.
   False; pass `align_corners=False` to reproduce it.)
`info["align_corners_source"]` says which rule decided.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional, Tuple, Union

import torch
from torch import nn

from mp_lightning.checkpoints import register_converter
from mp_lightning.errors import CheckpointError
from mp_lightning.stages.fomm import FOMMStage
from mp_lightning.state_dicts import list_keys, load_strict, own_copies, read_checkpoint, strip_ddp_prefix
from mp_lightning.networks.fomm import (
    FOMMNetConfig,
    KPDetector,
    OcclusionAwareGenerator,
    build_fomm_discriminator,
    set_align_corners,
)

__all__ = [
    "ALIGN_CORNERS_KEY",
    "read_fomm_checkpoint",
    "infer_fomm_config",
    "load_official_fomm",
    "export_official_fomm",
    "convert_fomm",
]

ALIGN_CORNERS_KEY = "grid_sample_align_corners"
OFFICIAL_ALIGN_CORNERS = True
_OPTIMIZER_KEYS = ("optimizer_generator", "optimizer_kp_detector", "optimizer_discriminator")


def read_fomm_checkpoint(source: Union[str, Path, Mapping]) -> dict:
    """The checkpoint dict of an official-layout FOMM file (or an already loaded dict).

    Raises CheckpointError when the file is missing/unreadable or lacks `kp_detector`/`generator`.
    """
    blob, name = (source, "checkpoint") if isinstance(source, Mapping) else (read_checkpoint(source), str(source))
    missing = [k for k in ("kp_detector", "generator") if k not in blob]
    if missing:
        raise CheckpointError(
            f"{name}: not an official FOMM checkpoint: no {' / '.join(repr(m) for m in missing)} "
            f"(top-level keys: {list_keys(sorted(map(str, blob)))})"
        )
    return blob


def infer_fomm_config(blob: Mapping, base: Optional[FOMMNetConfig] = None) -> FOMMNetConfig:
    """Config for the checkpoint: `base` (default vox-256) with the options readable from key names and
    head shapes (keypoint count, jacobians, occlusion, bottleneck depth, discriminator variant)."""
    cfg = base or FOMMNetConfig()
    kp = strip_ddp_prefix(blob["kp_detector"])
    gen = strip_ddp_prefix(blob["generator"])
    changes = {}
    if "kp.weight" in kp:
        changes["num_kp"] = int(kp["kp.weight"].shape[0])
    changes["estimate_jacobian"] = "jacobian.weight" in kp
    if "jacobian.weight" in kp:
        n = changes.get("num_kp", cfg.num_kp)
        changes["kp_single_jacobian_map"] = int(kp["jacobian.weight"].shape[0]) == 4 and n != 1
    changes["estimate_occlusion_map"] = "dense_motion_network.occlusion.weight" in gen
    n_bottleneck = len({k.split(".")[1] for k in gen if k.startswith("bottleneck.") and k.endswith("conv1.weight")})
    if n_bottleneck:
        changes["num_bottleneck_blocks"] = n_bottleneck
    disc = blob.get("discriminator")
    if isinstance(disc, Mapping) and disc:
        disc = strip_ddp_prefix(disc)
        changes["disc_sn"] = any(k.endswith("weight_orig") for k in disc)
        scales = sorted({k.split(".")[1] for k in disc if k.startswith("discs.")}, key=lambda s: float(s.replace("-", ".")))
        if scales:
            changes["disc_scales"] = [float(s.replace("-", ".")) for s in scales]
            first = f"discs.{scales[0]}.down_blocks.0.conv.weight"
            first = first if first in disc else first + "_orig"
            if first in disc:
                extra = int(disc[first].shape[1]) - cfg.num_channels
                changes["disc_use_kp"] = extra > 0
    return replace(cfg, **changes)


# the sizes a FOMM file does not show: what to do when they differ from vox-256
_SIZE_HINT = ("sizes other than keypoint count, jacobians, occlusion and bottleneck depth come from the config: "
              "pass config=FOMMNetConfig(...) for a non-vox-256 checkpoint")


def _load_network(module: nn.Module, blob: Mapping, entry: str, name: str) -> int:
    """Strict load of `blob[entry]` into `module`; returns how many fp16 tensors were converted."""
    sd = strip_ddp_prefix(blob[entry])
    load_strict(module, own_copies(sd), f"{name} [{entry!r}]", hint=_SIZE_HINT)
    return sum(int(torch.is_tensor(v) and v.dtype == torch.float16) for v in sd.values())


def load_official_fomm(
    path: Union[str, Path, Mapping],
    align_corners: Optional[bool] = None,
    config: Optional[FOMMNetConfig] = None,
    discriminator: bool = True,
) -> Tuple[KPDetector, OcclusionAwareGenerator, Optional[nn.Module], dict]:
    """Builds the networks for an official-layout checkpoint and loads it strictly.

    Returns (kp_detector, generator, discriminator or None, info), networks in eval mode on CPU.
    `config` overrides the vox-256 sizes (options visible in the file are still read from it);
    `discriminator=False` skips it. The grid_sample convention is decided as in the module docstring.
    """
    blob = read_fomm_checkpoint(path)
    name = "checkpoint" if isinstance(path, Mapping) else str(path)
    if align_corners is not None:
        ac, ac_source = bool(align_corners), "argument"
    elif ALIGN_CORNERS_KEY in blob:
        ac, ac_source = bool(blob[ALIGN_CORNERS_KEY]), "checkpoint flag"
    else:
        ac, ac_source = OFFICIAL_ALIGN_CORNERS, "official release default (trained on torch 1.0)"
    cfg = replace(infer_fomm_config(blob, config), align_corners=ac)

    kp_detector = KPDetector.from_config(cfg)
    generator = OcclusionAwareGenerator.from_config(cfg)
    n_half = _load_network(kp_detector, blob, "kp_detector", name)
    n_half += _load_network(generator, blob, "generator", name)
    disc = None
    disc_sd = blob.get("discriminator")
    if discriminator and isinstance(disc_sd, Mapping) and disc_sd:
        disc = build_fomm_discriminator(cfg)
        n_half += _load_network(disc, blob, "discriminator", name)
        disc.eval()
    set_align_corners(generator, ac)
    kp_detector.eval()
    generator.eval()

    info = {
        "epoch": blob.get("epoch"),
        "num_kp": cfg.num_kp,
        "align_corners": ac,
        "align_corners_source": ac_source,
        "discriminator": "loaded" if disc is not None else ("skipped" if disc_sd else "absent"),
        "optimizer_states": [k for k in _OPTIMIZER_KEYS if k in blob] or "none",
        "fp16_tensors_converted": n_half,
        "parameters": {
            "kp_detector": sum(p.numel() for p in kp_detector.parameters()),
            "generator": sum(p.numel() for p in generator.parameters()),
            "discriminator": sum(p.numel() for p in disc.parameters()) if disc is not None else 0,
        },
        "config": cfg,
    }
    return kp_detector, generator, disc, info


def export_official_fomm(
    path: Union[str, Path],
    kp_detector: nn.Module,
    generator: nn.Module,
    discriminator: Optional[nn.Module] = None,
    epoch: int = 0,
    align_corners: Optional[bool] = None,
) -> Path:
    """Writes our networks in the official layout (loadable by the official `demo.py`), plus the
    `grid_sample_align_corners` flag (taken from the generator when not given) that the official code
    ignores and `load_official_fomm` honours."""
    if align_corners is None:
        align_corners = bool(getattr(generator, "align_corners", OFFICIAL_ALIGN_CORNERS))
    blob = {
        "kp_detector": kp_detector.state_dict(),
        "generator": generator.state_dict(),
        "epoch": int(epoch),
        ALIGN_CORNERS_KEY: bool(align_corners),
    }
    if discriminator is not None:
        blob["discriminator"] = discriminator.state_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path


@register_converter("fomm")
def convert_fomm(path, **options):
    """`mp-lightning import-checkpoint fomm vox-cpk.pth.tar --out X.ckpt [--option align_corners=false]`.

    Options: align_corners (bool, default from the file, see module docstring), discriminator (bool,
    default True). Returns (FOMMStage with the imported networks, info).
    """
    unknown = set(options) - {"align_corners", "discriminator"}
    if unknown:
        raise CheckpointError(f"unknown fomm converter option(s): {', '.join(sorted(unknown))} "
                              "(known: align_corners, discriminator)")
    kp, gen, disc, info = load_official_fomm(
        path, align_corners=options.get("align_corners"), discriminator=bool(options.get("discriminator", True))
    )
    stage = FOMMStage.from_networks(kp, gen, disc, info["config"])
    info = dict(info)
    info["config"] = "vox-256" if info["config"] == replace(FOMMNetConfig(), align_corners=info["align_corners"]) else info["config"]
    return stage, info
