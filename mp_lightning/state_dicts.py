"""Reading weight files and loading state dicts, the one way every loader of the framework does it.

Below the stages, the importers of official checkpoints and the networks that read pretrained weights:
it depends on torch and `mp_lightning.errors` only. Every strict or partial load that fails raises one
`CheckpointError` format: `{source}: the weights do not fit {Network}: N missing keys: ...; N unexpected
keys: ...; N shape mismatches (checkpoint vs network): key (4,) vs (3,); ...`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from mp_lightning.errors import CheckpointError

DDP_PREFIX = "module."  # DataParallel / DistributedDataParallel wrappers save their network's keys under it


def list_keys(keys: Iterable[str], limit: int = 8) -> str:
    """`a, b, c, ... (N in all)`: the first `limit` names of a key list, for an error message."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def read_checkpoint(path: str | Path, weights_only: bool = True, map_location="cpu") -> Mapping:
    """The dict stored in the file `path`; a `CheckpointError` naming the file when it is missing, cannot be
    unpickled (truncated download, HTML error page, a pickle needing arbitrary code) or holds no dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({exc})") from exc
    if not isinstance(blob, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(blob).__name__}")
    return blob


def read_state_dict(path: str | Path, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of a weight file: its `state_dict` entry (Lightning checkpoints) or the file itself."""
    blob = read_checkpoint(path, weights_only=weights_only)
    return dict(blob.get("state_dict", blob))


def strip_ddp_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the `module.` that a DataParallel/DDP-wrapped save puts before every key."""
    return {(k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k): v for k, v in state.items()}


def under_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` below `prefix`, with the prefix taken off (`features.0.weight` -> `0.weight`)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def own_copies(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    """Tensors with storage of their own (floating ones cast to `dtype` unless None): released files keep
    large weights as overlapping fp16 views of one pool, which must not alias each other once loaded."""
    out = {}
    for k, v in state.items():
        if torch.is_tensor(v):
            v = v.detach()
            out[k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).clone()
    return out


def _mismatch(source: str, module: torch.nn.Module, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
              mismatched: Sequence[str] = (), hint: str = "") -> CheckpointError:
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {list_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {list_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (checkpoint vs network): {list_keys(mismatched, 4)}")
    return CheckpointError(f"{source}: the weights do not fit {type(module).__name__}: " + "; ".join(problems)
                           + (f" ({hint})" if hint else ""))


def _shape_mismatches(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], keys: Iterable[str]) -> list[str]:
    return [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in keys
            if torch.is_tensor(state[k]) and tuple(state[k].shape) != tuple(own[k].shape)]


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, hint: str = "") -> None:
    """`module.load_state_dict(state, strict=True)`, failing with every missing, unexpected and mis-shaped key
    and the `source` (file, and entry) named. `hint` says what the user can do about a mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = _shape_mismatches(own, state, [k for k in own if k in state])
    if missing or unexpected or mismatched:
        raise _mismatch(source, module, missing, unexpected, mismatched, hint)
    module.load_state_dict(dict(state), strict=True)


@dataclass
class PartialLoad:
    """What `load_matching` took: network keys loaded, network keys the file lacks, file keys the network lacks."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]


def load_matching(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                  prefixes: tuple[str, ...] = (), require_all: bool = False) -> PartialLoad:
    """Load the entries of `state` that name weights of `module` (those starting with `prefixes`, if any);
    the rest of `module` keeps its values. This is how `model.init_from` and GFPGAN initialisation work.

    Fails when nothing matches, when a matching weight has another shape, and (`require_all`) when a weight
    of `module` under `prefixes` is absent from `state`. `loaded` and `missing` are in the module's order.
    """
    own = module.state_dict()
    wanted = [k for k in own if not prefixes or k.startswith(prefixes)]
    loaded = [k for k in wanted if k in state]
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in own]
    if not loaded:
        raise CheckpointError(f"{source}: has no weights for {type(module).__name__}"
                              + (f" under {', '.join(prefixes)}" if prefixes else ""))
    mismatched = _shape_mismatches(own, state, loaded)
    if mismatched or (require_all and missing):
        raise _mismatch(source, module, missing if require_all else (), (), mismatched)
    with torch.no_grad():
        module.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return PartialLoad(loaded, missing, unexpected)
