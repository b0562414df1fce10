"""FOMM checkpoint reading: strictness, fp16 pool views, convention choice, official-layout round trip."""
from __future__ import annotations

import pytest
import torch

from mp_lightning.checkpoints.fomm import (
    ALIGN_CORNERS_KEY,
    export_official_fomm,
    infer_fomm_config,
    load_official_fomm,
)
from mp_lightning.errors import CheckpointError
from mp_lightning.networks.fomm import FOMMNetConfig, build_fomm


@pytest.fixture(scope="module")
def tiny_blob():
    torch.manual_seed(0)
    kp, gen, disc = build_fomm(FOMMNetConfig.tiny())
    return {
        "kp_detector": kp.state_dict(),
        "generator": gen.state_dict(),
        "discriminator": disc.state_dict(),
        "optimizer_generator": torch.optim.Adam(gen.parameters()).state_dict(),
        "epoch": 7,
    }


def test_loads_official_layout_with_optimizer_states(tmp_path, tiny_blob):
    path = tmp_path / "cpk.pth.tar"
    torch.save(tiny_blob, path)
    kp, gen, disc, info = load_official_fomm(path, config=FOMMNetConfig.tiny())
    assert info["epoch"] == 7 and info["discriminator"] == "loaded"
    assert info["optimizer_states"] == ["optimizer_generator"]
    assert info["align_corners"] is True and "official" in info["align_corners_source"]
    for key, value in tiny_blob["generator"].items():
        assert torch.equal(gen.state_dict()[key], value), key
    assert not kp.training and not gen.training
    _, _, no_disc, info = load_official_fomm(path, config=FOMMNetConfig.tiny(), discriminator=False)
    assert no_disc is None and info["discriminator"] == "skipped"


def test_fp16_pool_views_become_independent_float32(tiny_blob):
    blob = dict(tiny_blob)
    sd = dict(blob["generator"])
    key = "bottleneck.r0.conv1.weight"
    n = sd[key].numel()
    pool = torch.rand(n + 10).half()
    sd[key] = pool[:n].view(sd[key].shape)
    sd["bottleneck.r0.conv2.weight"] = pool[10:n + 10].view(sd[key].shape)  # overlapping view
    blob["generator"] = sd
    _, gen, _, info = load_official_fomm(blob, config=FOMMNetConfig.tiny())
    assert info["fp16_tensors_converted"] == 2
    w = gen.state_dict()[key]
    assert w.dtype == torch.float32 and torch.equal(w, pool[:n].float().view(w.shape))
    with torch.no_grad():
        gen.bottleneck.r0.conv1.weight.zero_()
    assert gen.bottleneck.r0.conv2.weight.abs().sum() > 0


def test_strict_errors_name_the_keys(tiny_blob):
    blob = dict(tiny_blob)
    sd = dict(blob["generator"])
    sd.pop("final.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["first.conv.weight"] = torch.zeros(1, 2, 3, 3)
    blob["generator"] = sd
    with pytest.raises(CheckpointError) as err:
        load_official_fomm(blob, config=FOMMNetConfig.tiny())
    msg = str(err.value)
    assert "final.bias" in msg and "extra.weight" in msg and "first.conv.weight" in msg
    with pytest.raises(CheckpointError, match="kp_detector"):
        load_official_fomm({"generator": {}}, config=FOMMNetConfig.tiny())
    with pytest.raises(CheckpointError, match="no such"):
        load_official_fomm("/nonexistent/vox-cpk.pth.tar")


def test_vox256_sizes_do_not_fit_a_tiny_file(tiny_blob):
    with pytest.raises(CheckpointError, match="missing keys"):
        load_official_fomm(tiny_blob)


def test_convention_flag_round_trip(tmp_path, tiny_blob):
    kp, gen, disc, _ = load_official_fomm(tiny_blob, config=FOMMNetConfig.tiny(), align_corners=False)
    assert gen.align_corners is False and gen.dense_motion_network.align_corners is False
    path = export_official_fomm(tmp_path / "ours.pth.tar", kp, gen, disc, epoch=3)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob[ALIGN_CORNERS_KEY] is False and set(blob) >= {"kp_detector", "generator", "discriminator", "epoch"}
    _, gen2, _, info = load_official_fomm(path, config=FOMMNetConfig.tiny())
    assert info["align_corners"] is False and info["align_corners_source"] == "checkpoint flag"
    _, gen3, _, info = load_official_fomm(path, config=FOMMNetConfig.tiny(), align_corners=True)
    assert gen3.dense_motion_network.align_corners is True and info["align_corners_source"] == "argument"


def test_infer_config_reads_variant_from_keys():
    cfg = FOMMNetConfig.tiny(num_kp=6, disc_sn=False, disc_use_kp=True, num_bottleneck_blocks=3)
    kp, gen, disc = build_fomm(cfg)
    blob = {"kp_detector": kp.state_dict(), "generator": gen.state_dict(), "discriminator": disc.state_dict()}
    got = infer_fomm_config(blob, FOMMNetConfig.tiny())
    assert (got.num_kp, got.disc_sn, got.disc_use_kp, got.num_bottleneck_blocks) == (6, False, True, 3)
    load_official_fomm(blob, config=FOMMNetConfig.tiny())  # loads without being told those options
