"""Official SR checkpoints: golden outputs, strict loading errors, fp16 pool views, GFPGAN v1.3 init, converter."""
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from mp_lightning.checkpoints import converters
from mp_lightning.checkpoints.metaportrait_sr import (
    infer_sr_config,
    init_from_gfpgan,
    load_official_sr,
    read_basicsr_state_dict,
)
from mp_lightning.errors import CheckpointError
from mp_lightning.networks.temporal_sr import TemporalSRConfig, TemporalSRGenerator

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "golden" / "metaportrait"
TEMPORAL = ("window_down.", "recurrent_forward.")


def _tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return TemporalSRGenerator(TemporalSRConfig.tiny(**overrides)).eval()


def _clips(t=3, seed=0):
    return torch.rand(1, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _save(path, sd, ema=None):
    torch.save({"params": sd, "params_ema": sd if ema is None else ema}, path)
    return path


@pytest.mark.slow
@pytest.mark.skipif(not (GOLDEN / "sr_io.pt").is_file(), reason="golden reference data absent")
def test_golden_official_sr_output_and_style_code():
    net, info = load_official_sr(GOLDEN / "sr_ckpt.pth")
    assert info["param_key"] == "params_ema" and info["num_keys"] == 341
    assert info["parameters"] == 154_690_396 and info["trainable"] == 124_413_813
    assert info["config"] == asdict(TemporalSRConfig.official())
    io = torch.load(GOLDEN / "sr_io.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        out = net(io["inputs"]["lq"], return_intermediates=True)
    expected = io["outputs"]["output"]
    diff_out = (out["output"] - expected).abs().max().item()
    diff_style = (out["style_code"].flatten(0, 1) - io["intermediates"]["style_code"]).abs().max().item()
    print(f"golden SR max |diff|: output {diff_out:.3g}, style_code {diff_style:.3g}")
    assert out["output"].shape == expected.shape == (1, 3, 3, 512, 512)
    # measured over 9 CPU kernel settings: output <= 1.1e-5, style code <= 5.2e-6 (benchmarks/golden_spread.py --cases sr)
    assert diff_out <= 1e-4 and diff_style <= 1e-4
    assert out["output"].max() > 1.0  # official semantics: (decoder + 1) / 2 without clamping


@pytest.mark.skipif(not (GOLDEN / "sr_ckpt.pth").is_file(), reason="golden reference data absent")
def test_golden_checkpoint_reads_both_keys_as_independent_float32():
    ema, key_ema = read_basicsr_state_dict(GOLDEN / "sr_ckpt.pth", use_ema=True)
    raw, key_raw = read_basicsr_state_dict(GOLDEN / "sr_ckpt.pth", use_ema=False)
    assert (key_ema, key_raw) == ("params_ema", "params")
    assert len(ema) == 341 and all(v.dtype == torch.float32 for v in ema.values())
    pointers = {v.untyped_storage().data_ptr() for v in ema.values()}
    assert len(pointers) == len(ema)  # the overlapping fp16 pool views were copied apart
    assert all(torch.equal(ema[k], raw[k]) for k in ema)
    assert infer_sr_config(ema) == TemporalSRConfig.official()


def test_tiny_round_trip_infers_config_and_reproduces_outputs(tmp_path):
    net = _tiny(window_radius=2)
    sd = net.state_dict()
    ema = {k: v + 0.01 if v.is_floating_point() and k.startswith("final_conv") else v for k, v in sd.items()}
    path = _save(tmp_path / "sr.pth", sd, ema)
    loaded, info = load_official_sr(path, use_ema=False)
    assert info["param_key"] == "params"
    assert loaded.config == net.config
    with torch.no_grad():
        assert torch.equal(loaded(_clips()), net(_clips()))
    loaded_ema, info = load_official_sr(path)
    assert info["param_key"] == "params_ema"
    assert torch.equal(loaded_ema.final_conv.bias, ema["final_conv.bias"])
    unfrozen, info = load_official_sr(path, freeze_decoder=False)
    assert info["trainable"] == info["parameters"]
    per_frame = _tiny(temporal=False)
    loaded_pf, _ = load_official_sr(_save(tmp_path / "pf.pth", per_frame.state_dict()))
    assert not loaded_pf.config.temporal


def test_fp16_overlapping_pool_views_load_safely(tmp_path):
    net = _tiny()
    sd = net.state_dict()
    pool = torch.randn(4096).half()
    key = "window_down.0.conv1.weight"  # (48, 48, 3, 3): rows overlap with a 16-element step
    shape = sd[key].shape
    sd[key] = pool.as_strided(shape, (16, 9, 3, 1))
    sd["final_conv.bias"] = pool[:16]
    loaded, _ = load_official_sr(_save(tmp_path / "pool.pth", sd))
    assert loaded.window_down[0].conv1.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.window_down[0].conv1.weight, sd[key].float())
    with torch.no_grad():
        loaded.window_down[0].conv1.weight.add_(1.0)  # editing one tensor must not move its pool neighbours
    torch.testing.assert_close(loaded.final_conv.bias, pool[:16].float())


def test_strict_loading_names_missing_unexpected_and_mismatched_keys(tmp_path):
    sd = _tiny().state_dict()
    missing = dict(sd)
    del missing["final_conv.bias"]
    with pytest.raises(CheckpointError, match="missing keys: final_conv.bias"):
        load_official_sr(_save(tmp_path / "a.pth", missing))
    extra = dict(sd, **{"spynet.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys: spynet.weight"):
        load_official_sr(_save(tmp_path / "b.pth", extra))
    wrong = dict(sd, **{"toRGB.0.bias": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"toRGB.0.bias \(4,\) vs \(3,\)"):
        load_official_sr(_save(tmp_path / "c.pth", wrong))
    with pytest.raises(CheckpointError, match="unexpected keys: conv_body_down.3"):  # config does not fit
        load_official_sr(_save(tmp_path / "d.pth", sd), config=TemporalSRConfig.tiny(out_size=32))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_official_sr(tmp_path / "absent.pth")
    torch.save({"generator": {}}, tmp_path / "e.pth")
    with pytest.raises(CheckpointError, match="params"):
        load_official_sr(tmp_path / "e.pth")


def test_init_from_gfpgan_loads_everything_but_the_window_modules(tmp_path):
    gfpgan = _tiny(seed=3, temporal=False)
    decoy = {k: torch.zeros_like(v) for k, v in gfpgan.state_dict().items()}
    path = _save(tmp_path / "GFPGANv1.3.pth", decoy, ema=gfpgan.state_dict())  # official reads params_ema
    net = _tiny(seed=0)
    info = init_from_gfpgan(net, path)
    assert info["param_key"] == "params_ema"
    assert info["loaded"] == list(gfpgan.state_dict())
    assert info["missing"] and all(k.startswith(TEMPORAL) for k in info["missing"])
    assert info["missing_non_temporal"] == [] and info["unexpected"] == []
    with torch.no_grad():  # zero-initialised window modules: exactly the per-frame GFPGAN network
        assert torch.equal(net(_clips(t=4)), gfpgan(_clips(t=4)))

    other = _tiny(out_size=32)
    with pytest.raises(CheckpointError, match="do not fit"):
        init_from_gfpgan(other, path)


def test_converter_is_registered_and_needs_the_stage():
    convert = converters()["metaportrait-sr"]
    try:
        import mp_lightning.stages.super_resolution  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(NotImplementedError, match="SuperResolutionStage"):
            convert("whatever.pth")
    else:
        pytest.skip("SuperResolutionStage exists: its own tests cover the import round trip")
