"""Official PIRender checkpoints (`epoch_00190_iteration_000400000_checkpoint.pt`) -> our PIRender stage.

The file (BASELINES.md 2.10) is a `torch.save` dict with `net_G`, `net_G_ema` (state dicts of the
official `FaceGenerator`, `config/face.yaml`), usually `current_epoch` / `current_iteration`, and from
the training code `opt_G` / `sch_G`. Under DDP `net_G` carries a `module.` prefix (stripped here);
`net_G_ema` never does. Inference uses `net_G_ema` (official `inference.py`, SadTalker); that is the
default, `--option weights=net_G` takes the other. The official loader is non-strict and silently
ignores mismatches; here every missing, unexpected or mis-shaped key is an error that names it.

The official weights expect Deep3DFaceRecon descriptors (`model.descriptor: deep3dfacerecon`), so the
imported stage refuses data whose `ROOT/semantics.json` declares another kind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from mp_lightning.checkpoints import register_converter
from mp_lightning.errors import CheckpointError
from mp_lightning.networks.pirender import PIRenderGenerator, PIRenderNetConfig

WEIGHTS = ("net_G_ema", "net_G")
OFFICIAL_DESCRIPTOR = "deep3dfacerecon"


def _listing(keys, limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def read_pirender_checkpoint(source: Union[str, Path, Mapping]) -> dict:
    """The checkpoint dict of an official-layout PIRender file; CheckpointError when unreadable or lacking
    both `net_G` and `net_G_ema`."""
    if isinstance(source, Mapping):
        blob, name = source, "checkpoint"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated downloads, HTML error pages, arbitrary pickles
            raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({exc})") from exc
    if not isinstance(blob, Mapping) or not any(k in blob for k in WEIGHTS):
        keys = sorted(map(str, blob)) if isinstance(blob, Mapping) else type(blob).__name__
        raise CheckpointError(f"{name}: not an official PIRender checkpoint: no 'net_G_ema' or 'net_G' (found: {_listing(keys)})")
    return blob


def strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict:
    # DDP-wrapped saves of the official trainer prefix every key of net_G with `module.`
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def load_generator_strict(net: PIRenderGenerator, sd: Mapping[str, torch.Tensor], name: str) -> int:
    """Strict load naming every missing, unexpected and mis-shaped key; fp16 tensors (the golden file's
    overlapping views of one pool) become independent float32 copies. Returns how many were fp16."""
    own = net.state_dict()
    sd = strip_module_prefix(sd)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} (file {tuple(sd[k].shape)}, network {tuple(own[k].shape)})"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_listing(mismatched, 4)}")
        raise CheckpointError(f"{name} does not match the PIRender generator (config/face.yaml sizes): " + "; ".join(parts))
    converted, n_half = {}, 0
    for k, v in sd.items():
        n_half += int(v.dtype == torch.float16)
        converted[k] = v.detach().to(dtype=own[k].dtype).clone() if v.is_floating_point() else v
    net.load_state_dict(converted, strict=True)
    return n_half


def load_official_pirender(path: Union[str, Path, Mapping], weights: str = "net_G_ema",
                           config: Optional[PIRenderNetConfig] = None) -> tuple[PIRenderGenerator, dict]:
    """The official generator with `weights` (net_G_ema | net_G) loaded strictly, in eval mode, and an info dict."""
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights={weights!r}: choose net_G_ema (official inference) or net_G")
    blob = read_pirender_checkpoint(path)
    if weights not in blob:
        raise CheckpointError(f"{path}: has no '{weights}' (it holds {', '.join(k for k in WEIGHTS if k in blob)}); "
                              f"pass --option weights={next(k for k in WEIGHTS if k in blob)}")
    net = PIRenderGenerator(config)
    n_half = load_generator_strict(net, blob[weights], f"{path}['{weights}']")
    info = {
        "weights": weights,
        "current_epoch": blob.get("current_epoch"),
        "current_iteration": blob.get("current_iteration"),
        "descriptor": OFFICIAL_DESCRIPTOR,
        "optimizer_states": [k for k in ("opt_G", "sch_G") if k in blob] or "none",
        "fp16_tensors_converted": n_half,
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    return net.eval(), info


def export_official_pirender(path: Union[str, Path], stage, epoch: int = 0, iteration: int = 0) -> Path:
    """Our stage's generator and EMA copy in the official layout (`net_G`, `net_G_ema`, loadable by the
    official `inference.py` with `config/face.yaml` sizes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"net_G": stage.generator.state_dict(), "net_G_ema": stage.generator_ema.state_dict(),
                "current_epoch": int(epoch), "current_iteration": int(iteration)}, path)
    return path


@register_converter("pirender")
def convert_pirender(path, **options):
    """`mp-lightning import-checkpoint pirender FILE --out X.ckpt [--option weights=net_G]`.

    Returns (PIRenderStage holding the chosen weights in its generator and EMA copy, info)."""
    from mp_lightning.stages.pirender import PIRenderStage

    unknown = set(options) - {"weights"}
    if unknown:
        raise CheckpointError(f"unknown pirender converter option(s): {', '.join(sorted(unknown))} (known: weights)")
    net, info = load_official_pirender(path, weights=str(options.get("weights", "net_G_ema")))
    return PIRenderStage.from_generator(net, descriptor=OFFICIAL_DESCRIPTOR), info
