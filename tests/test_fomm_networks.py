"""FOMM networks: official key layout and sizes, tiny forward/backward, grid_sample convention switch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mp_lightning.networks.fomm import (
    DenseMotionNetwork,
    FOMMNetConfig,
    KPDetector,
    OcclusionAwareGenerator,
    build_fomm,
    build_fomm_discriminator,
    set_align_corners,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MANIFESTS = REFERENCE / "fomm"


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _manifest(name: str):
    path = MANIFESTS / name
    if not path.is_file():
        pytest.skip(f"reference manifest {path} not present")
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    return [(k, () if s == "scalar" else tuple(int(x) for x in s.split("x")), d) for k, s, d in rows]


def _assert_matches(module, manifest):
    sd = module.state_dict()
    assert list(sd) == [k for k, _, _ in manifest], "key order/names differ from the official state dict"
    for key, shape, dtype in manifest:
        assert tuple(sd[key].shape) == shape, key
        assert str(sd[key].dtype).replace("torch.", "") == dtype, key


@pytest.fixture(scope="module")
def official():
    torch.manual_seed(0)
    return build_fomm(FOMMNetConfig())


def test_kp_detector_matches_manifest(official):
    _assert_matches(official[0], _manifest("kp_detector.tsv"))


def test_generator_matches_manifest(official):
    _assert_matches(official[1], _manifest("generator.tsv"))


def test_discriminators_match_manifests(official):
    _assert_matches(official[2], _manifest("discriminator.tsv"))
    _assert_matches(build_fomm_discriminator(FOMMNetConfig.vox_adv256()), _manifest("discriminator_vox-adv-256.tsv"))


def test_official_parameter_counts(official):
    kp, gen, disc = official
    assert _n_params(kp) == 14_215_368
    assert _n_params(gen) == 45_575_391
    assert _n_params(gen.dense_motion_network) == 37_730_268
    assert _n_params(gen.dense_motion_network.hourglass) == 37_666_752
    assert _n_params(gen.dense_motion_network.mask) == 58_223
    assert _n_params(gen.dense_motion_network.occlusion) == 5_293
    assert _n_params(disc) == 2_758_849
    assert _n_params(build_fomm_discriminator(FOMMNetConfig.vox_adv256())) == 2_769_089
    assert _n_params(kp) + _n_params(gen) + _n_params(disc) == 62_549_608


def test_jacobian_head_starts_at_identity():
    kp = KPDetector.from_config(FOMMNetConfig.tiny())
    out = kp(torch.rand(2, 3, 64, 64))
    assert torch.allclose(out["jacobian"], torch.eye(2).expand(2, 4, 2, 2), atol=1e-6)
    assert out["value"].abs().max() <= 1


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    cfg = FOMMNetConfig.tiny()
    return cfg, *build_fomm(cfg)


def test_tiny_forward_shapes_and_ranges(tiny):
    cfg, kp, gen, disc = tiny
    src, drv = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    kp_s, kp_d = kp(src), kp(drv)
    assert kp_s["value"].shape == (2, cfg.num_kp, 2) and kp_s["jacobian"].shape == (2, cfg.num_kp, 2, 2)
    out = gen(src, kp_driving=kp_d, kp_source=kp_s)
    assert out["prediction"].shape == (2, 3, 64, 64)
    assert 0 <= out["prediction"].min() and out["prediction"].max() <= 1
    assert out["mask"].shape == (2, cfg.num_kp + 1, 32, 32)
    assert torch.allclose(out["mask"].sum(1), torch.ones(2, 32, 32), atol=1e-5)
    assert out["sparse_deformed"].shape == (2, cfg.num_kp + 1, 3, 32, 32)
    assert out["occlusion_map"].shape == (2, 1, 32, 32)
    assert out["deformation"].shape == (2, 32, 32, 2)
    assert out["deformed"].shape == (2, 3, 64, 64)
    d = disc(out["prediction"])
    assert d["prediction_map_1"].shape[:2] == (2, 1) and len(d["feature_maps_1"]) == cfg.disc_num_blocks


def test_tiny_backward_reaches_every_trainable_parameter(tiny):
    cfg, kp, gen, _ = tiny
    src, drv = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = gen(src, kp_driving=kp(drv), kp_source=kp(src))
    (out["prediction"] - drv).abs().mean().backward()
    for name, p in list(kp.named_parameters()) + list(gen.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in kp.parameters())


def test_same_keypoints_give_identity_motion(tiny):
    # driving == source keypoints: every sparse motion is the identity grid, so the dense flow is too
    cfg, kp, gen, _ = tiny
    gen.eval()
    src = torch.rand(1, 3, 64, 64)
    kps = kp(src)
    motion = gen.dense_motion_network(src, kp_driving=kps, kp_source=kps)
    from mp_lightning.networks.blocks import make_coordinate_grid

    assert torch.allclose(motion["deformation"][0], make_coordinate_grid((32, 32)), atol=1e-5)
    # with align_corners=True the identity grid is an exact identity warp of the downsampled source
    small = gen.dense_motion_network.down(src)
    for k in range(cfg.num_kp + 1):
        assert torch.allclose(motion["sparse_deformed"][:, k], small, atol=1e-5)


def test_align_corners_switch_changes_output(tiny):
    cfg, kp, gen, _ = tiny
    gen.eval()
    src, drv = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        kps, kpd = kp(src), kp(drv)
        a = gen(src, kp_driving=kpd, kp_source=kps)["prediction"]
        set_align_corners(gen, False)
        assert gen.dense_motion_network.align_corners is False
        b = gen(src, kp_driving=kpd, kp_source=kps)["prediction"]
    assert (a - b).abs().max() > 1e-4


def test_zeroth_order_variant_without_jacobians():
    cfg = FOMMNetConfig.tiny(estimate_jacobian=False, estimate_occlusion_map=False)
    kp, gen, _ = build_fomm(cfg, discriminator=False)
    src = torch.rand(1, 3, 64, 64)
    kps = kp(src)
    assert "jacobian" not in kps and kp.jacobian is None
    out = gen(src, kp_driving=kps, kp_source=kps)
    assert "occlusion_map" not in out and out["prediction"].shape == (1, 3, 64, 64)
    assert gen.dense_motion_network.occlusion is None
    assert isinstance(gen.dense_motion_network, DenseMotionNetwork) and isinstance(gen, OcclusionAwareGenerator)
