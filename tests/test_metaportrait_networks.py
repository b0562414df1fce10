"""MetaPortrait networks: official layout (manifests, parameter counts), golden outputs of the released
code with the golden checkpoint, tiny-config forward/backward, losses, discriminator, checkpoint import."""
from pathlib import Path

import pytest
import torch

from mp_lightning.errors import CheckpointError
from mp_lightning.networks.discriminator import MultiScaleDiscriminator
from mp_lightning.networks.metaportrait import MetaPortraitGenerator, MetaPortraitNetConfig, remove_spectral_norm_
from tests.conftest import METAPORTRAIT_GOLDEN_ATOL as ATOL

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MANIFESTS = REFERENCE / "metaportrait"
GOLDEN = REFERENCE / "golden" / "metaportrait"
needs_manifests = pytest.mark.skipif(not MANIFESTS.is_dir(), reason="reference manifests absent")
needs_golden = pytest.mark.skipif(not (GOLDEN / "base_ckpt.pth.tar").is_file(), reason="golden data absent")


def read_manifest(path):
    rows = [line.rstrip("\n").split("\t") for line in open(path)][1:]
    return [(k, tuple(int(s) for s in shape.split("x"))) for k, shape, _ in rows if k]


def layout(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


@needs_manifests
@pytest.mark.parametrize("sn,manifest", [(True, "base_generator.tsv"), (False, "base_generator_remove_sn.tsv")])
def test_official_generator_matches_manifest(sn, manifest):
    g = MetaPortraitGenerator(MetaPortraitNetConfig(spectral_norm=sn))
    assert layout(g) == read_manifest(MANIFESTS / manifest)
    assert sum(p.numel() for p in g.parameters()) == 130_212_376
    parts = {n: sum(p.numel() for p in m.parameters()) for n, m in g.named_children()}
    assert parts == {"ladder_network": 10_466_880, "dense_motion_network": 74_812_803,
                     "feature_encoder": 3_398_976, "fuse_high_res": 38_656, "SPDAE_G": 41_495_061}


@needs_manifests
def test_discriminator_layouts():
    d = MultiScaleDiscriminator(scales=[1], block_expansion=32, max_features=512, num_blocks=4)
    assert layout(d) == read_manifest(MANIFESTS / "base_discriminator.tsv")
    assert sum(p.numel() for p in d.parameters()) == 2_758_849
    fomm = REFERENCE / "fomm"
    assert layout(MultiScaleDiscriminator(scales=[1.0], sn=True)) == read_manifest(fomm / "discriminator.tsv")
    assert layout(MultiScaleDiscriminator(scales=[1], use_kp=True)) == read_manifest(fomm / "discriminator_vox-adv-256.tsv")


def tiny_inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    return dict(
        source=torch.rand(b, 3, s, s, generator=g),
        source_line=torch.rand(b, 3, s, s, generator=g),
        driving_line=torch.rand(b, 3, s, s, generator=g),
        source_identity=torch.randn(b, cfg.identity_dim, generator=g),
        gaze_points=torch.rand(b, cfg.num_gaze, 2, generator=g) * 2 - 1,
        mouth_mask=(torch.rand(b, 1, s, s, generator=g) > 0.5).float(),
    )


def test_tiny_forward_backward_shapes():
    cfg = MetaPortraitNetConfig.tiny()
    g = MetaPortraitGenerator(cfg)
    n = sum(p.numel() for p in g.parameters())
    assert 100_000 < n < 1_000_000
    out = g(**tiny_inputs(cfg))
    s, h = cfg.image_size, cfg.image_size // 2 ** cfg.motion_stop_level
    assert out["prediction_raw"].shape == (2, 3, s, s) and out["deformed"].shape == (2, 3, s, s)
    assert out["occlusion_map"].shape == (2, 1, s, s) and out["deformation"].shape == (2, h, h, 2)
    assert out["flow"].shape == (2, 2, h, h) and out["ladder_code"].shape == (2, cfg.code_dim)
    assert out["prediction"].min() >= 0 and out["prediction"].max() <= 1
    assert torch.allclose(out["ladder_code"].norm(dim=1), torch.ones(2), atol=1e-3)
    (out["prediction_raw"].mean() + out["deformed"].mean()).backward()
    assert all(p.grad is not None for p in g.parameters())
    assert {id(p) for p in g.warp_parameters()} | {id(p) for p in g.refine_parameters()} == {id(p) for p in g.parameters()}


def test_identity_changes_output_and_remove_sn_keeps_function():
    cfg = MetaPortraitNetConfig.tiny()
    g = MetaPortraitGenerator(cfg).eval()
    x = tiny_inputs(cfg)
    with torch.no_grad():
        a = g(**x)["prediction_raw"]
        x2 = dict(x, source_identity=x["source_identity"] + 1)
        assert not torch.allclose(a, g(**x2)["prediction_raw"])
        remove_spectral_norm_(g)
        assert not any(k.endswith("weight_u") for k in g.state_dict())
        assert torch.allclose(a, g(**x)["prediction_raw"], atol=1e-4)


# ---------------------------------------------------------------------------------------------------- golden
@pytest.fixture(scope="module")
def golden_generator():
    from mp_lightning.checkpoints.metaportrait import load_official_generator

    g, d, info = load_official_generator(GOLDEN / "base_ckpt.pth.tar")
    return g, d, info


def max_diffs(out, ref, keys):
    return {k: (out[k] - ref[k]).abs().max().item() for k in keys}


@needs_golden
@pytest.mark.slow
def test_golden_full_outputs(golden_generator):
    g, d, info = golden_generator
    assert info["variant"] == "spectral_norm" and d is not None
    io = torch.load(GOLDEN / "base_io.pt", map_location="cpu", weights_only=True)
    i = io["inputs"]
    with torch.no_grad():
        w = g.warp(i["source"], i["source_line"], i["driving_line"])
        raw = g.refine(i["source"], w, i["source_id"], i["source_line"], i["driving_line"], i["gaze_points"],
                       i["mouth_mask"])
    out = dict(w, prediction=raw)
    diffs = max_diffs(out, io["outputs"], ["prediction", "deformed", "occlusion_map", "deformation", "flow"])
    diffs["ladder_code"] = (w["ladder_code"] - io["intermediates"]["ladder_code"]).abs().max().item()
    print("golden max abs diffs:", diffs)
    assert all(diffs[k] <= ATOL[k] for k in diffs), (diffs, ATOL)


@needs_golden
@pytest.mark.slow
def test_golden_warp_only_outputs(golden_generator):
    g, _, _ = golden_generator
    io = torch.load(GOLDEN / "base_warp_only_io.pt", map_location="cpu", weights_only=True)
    i = io["inputs"]
    with torch.no_grad():
        w = g.warp(i["source"], i["source_line"], i["driving_line"])
    diffs = max_diffs(w, io["outputs"], ["deformed", "occlusion_map", "deformation", "flow"])
    diffs["prediction(deformed)"] = (w["deformed"] - io["outputs"]["prediction"]).abs().max().item()
    print("golden warp-only max abs diffs:", diffs)
    tol = dict(ATOL, **{"prediction(deformed)": ATOL["deformed"]})
    assert all(diffs[k] <= tol[k] for k in diffs), (diffs, tol)


def test_converter_errors_name_keys(tmp_path):
    from mp_lightning.checkpoints.metaportrait import detect_spectral_norm, load_official_generator
    from mp_lightning.state_dicts import load_strict

    g = MetaPortraitGenerator(MetaPortraitNetConfig.tiny())
    assert detect_spectral_norm(g.state_dict())
    sd = dict(g.state_dict())
    sd.pop("fuse_high_res.bias")
    sd["fuse_high_res.weight"] = torch.zeros(3)
    sd["extra.key"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        load_strict(g, sd, "bad.pth.tar")
    msg = str(e.value)
    assert "fuse_high_res.bias" in msg and "extra.key" in msg and "fuse_high_res.weight" in msg
    with pytest.raises(CheckpointError, match="no such"):
        load_official_generator(tmp_path / "missing.pth.tar")
    torch.save({"epoch": 3}, tmp_path / "other.pth.tar")
    with pytest.raises(CheckpointError, match="generator"):
        load_official_generator(tmp_path / "other.pth.tar")


# ---------------------------------------------------------------------------------------------------- losses
def test_loss_terms():
    from mp_lightning.losses.adversarial import feature_matching_loss, lsgan_discriminator_loss, lsgan_generator_loss
    from mp_lightning.losses.identity import identity_loss
    from mp_lightning.losses.regions import eye_loss, mouth_loss
    from mp_lightning.networks.perceptual import VGGPerceptualLoss

    perc = VGGPerceptualLoss(scales=(1, 0.5), pretrained=False)
    pred = torch.rand(2, 3, 64, 64, requires_grad=True)
    target = torch.rand(2, 3, 64, 64)
    pp, tp = perc.pyramid(pred), perc.pyramid(target)
    assert list(pp) == ["prediction_1", "prediction_0.5"]
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 8:16, 8:24] = 1
    eye = eye_loss(pp, tp, mask)
    manual = sum(((pp[k] - tp[k]) ** 2 * torch.nn.functional.interpolate(mask, size=pp[k].shape[2:])).sum()
                 / (torch.nn.functional.interpolate(mask, size=pp[k].shape[2:]).sum() + 1e-6) for k in pp)
    assert torch.allclose(eye, manual)
    assert mouth_loss(tp, tp, mask) == 0
    total = perc(pred, target) + eye
    total.backward()
    assert pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in perc.parameters())
    assert perc(target, target) == 0

    d = MultiScaleDiscriminator(scales=[1], block_expansion=8, max_features=16)
    fake, real = d(pp["prediction_1"]), d(target)
    assert lsgan_generator_loss(fake) >= 0 and lsgan_discriminator_loss(real, fake) >= 0
    assert torch.allclose(lsgan_generator_loss({"prediction_map_1": torch.ones(1, 1, 2, 2)}), torch.zeros(()))
    assert feature_matching_loss(real, real) == 0 and feature_matching_loss(real, fake) > 0
    e = torch.randn(3, 8)
    assert torch.allclose(identity_loss(e, e), torch.zeros(()), atol=1e-6)
    assert torch.allclose(identity_loss(e, -e), torch.full((), 2.0), atol=1e-6)


def test_perceptual_pretrained_missing_is_clear(monkeypatch, tmp_path):
    from mp_lightning.errors import MissingWeightsError
    from mp_lightning.networks.perceptual import VGGPerceptualLoss

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="vgg19"):
        VGGPerceptualLoss(pretrained=True)
