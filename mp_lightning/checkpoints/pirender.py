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
from mp_lightning.state_dicts import list_keys, load_strict, own_copies, read_checkpoint, strip_ddp_prefix
from mp_lightning.networks.pirender import PIRenderGenerator, PIRenderNetConfig

WEIGHTS = ("net_G_ema", "net_G")
OFFICIAL_DESCRIPTOR = "deep3dfacerecon"


def read_pirender_checkpoint(source: Union[str, Path, Mapping]) -> Mapping:
    """The checkpoint dict of an official-layout PIRender file; CheckpointError when unreadable or lacking
    both `net_G` and `net_G_ema`."""
    blob, name = (source, "checkpoint") if isinstance(source, Mapping) else (read_checkpoint(source), str(source))
    if not any(k in blob for k in WEIGHTS):
        raise CheckpointError(f"{name}: not an official PIRender checkpoint: no 'net_G_ema' or 'net_G' "
                              f"(found: {list_keys(sorted(map(str, blob)))})")
    return blob


def load_generator_strict(net: PIRenderGenerator, sd: Mapping[str, torch.Tensor], name: str) -> int:
    """Strict load (DDP's `module.` stripped) naming every missing, unexpected and mis-shaped key; fp16 tensors
    (the golden file's overlapping views of one pool) become independent float32 copies. Returns how many were fp16."""
    sd = strip_ddp_prefix(sd)
    n_half = sum(int(torch.is_tensor(v) and v.dtype == torch.float16) for v in sd.values())
    load_strict(net, own_copies(sd), name, hint="the generator is built at config/face.yaml sizes")
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
