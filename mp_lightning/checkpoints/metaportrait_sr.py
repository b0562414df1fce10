"""Official MetaPortrait temporal-SR weights (`temporal_gfpgan.pth`) and GFPGAN v1.3 initialisation.

Both files are BasicSR dicts `{'params': state_dict, 'params_ema': state_dict}` whose keys match
`TemporalSRGenerator` one to one (GFPGAN v1.3 lacks only the temporal `window_down.*` / `recurrent_forward.*`).
Shared fp16 pool views (as in the golden files) are copied to independent float32 tensors before loading.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from mp_lightning.checkpoints import register_converter
from mp_lightning.errors import CheckpointError
from mp_lightning.networks.temporal_sr import TemporalSRConfig, TemporalSRGenerator

__all__ = [
    "read_basicsr_state_dict",
    "infer_sr_config",
    "load_official_sr",
    "init_from_gfpgan",
    "convert_metaportrait_sr",
]

_TEMPORAL_PREFIXES = ("window_down.", "recurrent_forward.")


def _listing(keys: List[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def read_basicsr_state_dict(path, use_ema: bool = True) -> Tuple[Dict[str, torch.Tensor], str]:
    """Reads a BasicSR checkpoint and returns (float32 state dict with independent storage, key used).

    Takes `params_ema` when `use_ema` and present, else `params`; a bare state dict is accepted too
    (key used: ""). Raises CheckpointError if the file is missing or holds neither.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle needing arbitrary code, a truncated file, not a torch file
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({exc})") from exc
    if not isinstance(blob, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(blob).__name__}")
    order = ["params_ema", "params"] if use_ema else ["params", "params_ema"]
    key = next((k for k in order if k in blob), None)
    if key is not None:
        sd = blob[key]
    elif blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        sd, key = blob, ""
    else:
        raise CheckpointError(f"{path}: not a BasicSR checkpoint: no 'params' or 'params_ema' "
                              f"(top-level keys: {_listing(sorted(map(str, blob)))})")
    # fp16 pool tensors may be overlapping views of one storage: copy each to its own float32 tensor
    return {k: v.detach().float().clone() for k, v in sd.items()}, key


def infer_sr_config(sd: Mapping[str, torch.Tensor], **overrides) -> TemporalSRConfig:
    """Reads out_size, widths, style width, MLP depth, W+ and SFT layout, temporal modules and window radius
    from the tensor shapes of a state dict; `overrides` (e.g. freeze_decoder) are applied on top."""
    try:
        num_style_feat = sd["stylegan_decoder.style_conv1.modulated_conv.modulation.weight"].shape[1]
        narrow = sd["stylegan_decoder.constant_input.weight"].shape[1] / 512
        noise_ids = [int(k.rsplit("noise", 1)[1]) for k in sd if k.startswith("stylegan_decoder.noises.noise")]
        if noise_ids:
            out_size = sd[f"stylegan_decoder.noises.noise{max(noise_ids)}"].shape[-1]
        else:  # noise buffers dropped: count the decoder levels instead
            levels = len({k.split(".")[2] for k in sd if k.startswith("stylegan_decoder.to_rgbs.")})
            out_size = 2 ** (levels + 2)
        log_size = int(math.log2(out_size))
        channel_multiplier = 2.0
        if log_size >= 6:  # the multiplier only shows from resolution 64 on (style_convs.6 is at 64)
            channel_multiplier = sd["stylegan_decoder.style_convs.6.modulated_conv.weight"].shape[1] / (256 * narrow)
        num_mlp = len([k for k in sd if k.startswith("stylegan_decoder.style_mlp.") and k.endswith(".weight")])
        num_latent = 2 * log_size - 2
        different_w = sd["final_linear.weight"].shape[0] == num_latent * num_style_feat
        sft_half = sd["condition_scale.0.2.weight"].shape[0] == sd["condition_scale.0.0.weight"].shape[0]
        temporal = "window_down.0.conv2.weight" in sd
        radius = 1
        if temporal:
            c_out, c_in = sd["window_down.0.conv2.weight"].shape[:2]
            radius = (c_in // c_out - 1) // 2
    except KeyError as exc:
        raise CheckpointError(f"not a MetaPortrait / GFPGAN SR state dict: key {exc} is missing") from exc
    cfg = TemporalSRConfig(out_size=out_size, num_style_feat=num_style_feat, channel_multiplier=channel_multiplier,
                           narrow=narrow, num_mlp=num_mlp, sft_half=sft_half, different_w=different_w,
                           temporal=temporal, window_radius=max(radius, 1))
    return replace(cfg, **overrides)


def _check_strict(net: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs network): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not match the temporal SR network: " + "; ".join(problems))


def load_official_sr(path, use_ema: bool = True, config: Optional[TemporalSRConfig] = None,
                     **overrides) -> Tuple[TemporalSRGenerator, dict]:
    """Builds a `TemporalSRGenerator` from an official BasicSR SR checkpoint and loads it strictly.

    `config`: the architecture; inferred from the tensor shapes when None (then `overrides` such as
    `freeze_decoder=False` apply). Returns (net in eval mode, info) with info keys: family, path,
    param_key ('params_ema' / 'params' / '' for a bare state dict), num_keys, parameters, trainable,
    config (dict). Raises CheckpointError naming missing, unexpected or mismatched keys.
    """
    sd, key = read_basicsr_state_dict(path, use_ema=use_ema)
    cfg = infer_sr_config(sd, **overrides) if config is None else replace(config, **overrides)
    net = TemporalSRGenerator(cfg)
    _check_strict(net, sd, f"{path} [{key or 'state dict'}]")
    net.load_state_dict(sd, strict=True)
    net.eval()
    info = {
        "family": "metaportrait-sr",
        "path": str(path),
        "param_key": key,
        "num_keys": len(sd),
        "parameters": sum(p.numel() for p in net.parameters()),
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "config": asdict(cfg),
    }
    return net, info


def init_from_gfpgan(net: TemporalSRGenerator, path, param_key: str = "params_ema") -> dict:
    """Initialises `net` from a GFPGAN v1.3 checkpoint the way official training does (`GFPGANv1_load_path`:
    `params_ema`, non-strict). Keys absent from the file (the temporal window modules) keep their init;
    with zero-initialised window modules the result equals the per-frame GFPGAN network.

    Returns info: loaded, missing (in the network, not in the file), unexpected (in the file only) key lists,
    param_key. Raises CheckpointError on a shape mismatch (the official non-strict load fails there too)
    or if no key at all matches.
    """
    blob_sd, key = read_basicsr_state_dict(path, use_ema=(param_key == "params_ema"))
    own = net.state_dict()
    loaded = [k for k in own if k in blob_sd]
    missing = [k for k in own if k not in blob_sd]
    unexpected = [k for k in blob_sd if k not in own]
    mismatched = [f"{k} {tuple(blob_sd[k].shape)} vs {tuple(own[k].shape)}" for k in loaded
                  if blob_sd[k].shape != own[k].shape]
    if mismatched:
        raise CheckpointError(f"{path}: GFPGAN weights do not fit this SR network (different out_size or "
                              f"widths?): {_listing(mismatched)}")
    if not loaded:
        raise CheckpointError(f"{path}: no key matches the temporal SR network (is it a GFPGAN v1.x file?)")
    with torch.no_grad():
        net.load_state_dict({k: blob_sd[k] for k in loaded}, strict=False)
    return {
        "path": str(path),
        "param_key": key,
        "loaded": loaded,
        "missing": missing,
        "unexpected": unexpected,
        "missing_non_temporal": [k for k in missing if not k.startswith(_TEMPORAL_PREFIXES)],
    }


@register_converter("metaportrait-sr")
def convert_metaportrait_sr(path, **options):
    """`mp-lightning import-checkpoint metaportrait-sr temporal_gfpgan.pth`: official BasicSR file ->
    (SuperResolutionStage, info). Options: use_ema (default True), freeze_decoder; the rest go to the stage.

    The stage must provide `SuperResolutionStage.from_generator(net, **options)`.
    """
    try:
        super_resolution = importlib.import_module("mp_lightning.stages.super_resolution")
    except ModuleNotFoundError as exc:
        if exc.name != "mp_lightning.stages.super_resolution":  # a missing dependency inside the stage
            raise
        raise NotImplementedError(
            "metaportrait-sr: the SuperResolutionStage (mp_lightning/stages/super_resolution.py) does not exist "
            "yet; load the network alone with mp_lightning.checkpoints.metaportrait_sr.load_official_sr(path)"
        ) from exc
    use_ema = options.pop("use_ema", True)
    net_overrides = {k: options.pop(k) for k in ("freeze_decoder",) if k in options}
    net, info = load_official_sr(path, use_ema=use_ema, **net_overrides)
    stage_cls = getattr(super_resolution, "SuperResolutionStage", None)
    if stage_cls is None or not hasattr(stage_cls, "from_generator"):
        raise NotImplementedError("metaportrait-sr: SuperResolutionStage.from_generator(net, **options) "
                                  "is needed to wrap the imported network")
    stage = stage_cls.from_generator(net, **options)
    return stage, info
