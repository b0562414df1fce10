"""Official MetaPortrait temporal-SR weights (`temporal_gfpgan.pth`) and GFPGAN v1.3 initialisation.

Both files are BasicSR dicts `{'params': state_dict, 'params_ema': state_dict}` whose keys match
`TemporalSRGenerator` one to one (GFPGAN v1.3 lacks only the temporal `window_down.*` / `recurrent_forward.*`).
Shared fp16 pool views (as in the golden files) are copied to independent float32 tensors before loading.
"""
from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Mapping, Optional, Tuple

import torch

from mp_lightning.checkpoints import register_converter
from mp_lightning.errors import CheckpointError
from mp_lightning.networks.temporal_sr import (
    TemporalSRConfig,
    TemporalSRGenerator,
    init_from_gfpgan,
    read_basicsr_state_dict,
)
from mp_lightning.stages.super_resolution import SuperResolutionStage
from mp_lightning.state_dicts import load_strict

__all__ = [
    "read_basicsr_state_dict",
    "infer_sr_config",
    "load_official_sr",
    "init_from_gfpgan",
    "convert_metaportrait_sr",
]


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
    load_strict(net, sd, f"{path} [{key or 'state dict'}]")
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


@register_converter("metaportrait-sr")
def convert_metaportrait_sr(path, **options):
    """`mp-lightning import-checkpoint metaportrait-sr temporal_gfpgan.pth`: official BasicSR file ->
    (SuperResolutionStage, info). Options: use_ema (default True), freeze_decoder; the rest go to the stage.

    """
    use_ema = options.pop("use_ema", True)
    net_overrides = {k: options.pop(k) for k in ("freeze_decoder",) if k in options}
    net, info = load_official_sr(path, use_ema=use_ema, **net_overrides)
    stage = SuperResolutionStage.from_generator(net, **options)
    return stage, info
