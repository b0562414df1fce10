"""FOMM relative/absolute motion transfer and the random-TPS equivariance losses."""
from __future__ import annotations

import math

import pytest
import torch

from mp_lightning.losses.equivariance import (
    RandomTPS,
    TransformParams,
    equivariance_jacobian_loss,
    equivariance_losses,
    equivariance_value_loss,
)
from mp_lightning.networks.fomm_motion import convex_hull_area, movement_scale, normalize_kp, transfer_motion
from mp_lightning.networks.fomm import FOMMNetConfig, KPDetector


def _kp(value, jac=None):
    value = torch.as_tensor(value, dtype=torch.float32)
    if jac is None:
        jac = torch.eye(2).expand(*value.shape[:-1], 2, 2).clone()
    return {"value": value, "jacobian": jac}


SQUARE = [[[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]]


# --- motion -----------------------------------------------------------------------------------------
def test_hull_area_and_scale():
    assert convex_hull_area(torch.tensor(SQUARE[0])) == pytest.approx(1.0)
    assert convex_hull_area(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])) == 0.0  # collinear
    src, ini = _kp(SQUARE), _kp([[[x * 2, y * 2] for x, y in SQUARE[0]]])
    assert movement_scale(src, ini).item() == pytest.approx(0.5)


def test_absolute_passes_driving_through():
    src, drv = _kp(SQUARE), _kp(torch.rand(1, 4, 2))
    out = transfer_motion(src, drv, None, mode="absolute")
    assert torch.equal(out["value"], drv["value"]) and torch.equal(out["jacobian"], drv["jacobian"])
    with pytest.raises(ValueError):
        transfer_motion(src, drv, None, mode="relative")
    with pytest.raises(ValueError):
        transfer_motion(src, drv, drv, mode="sideways")


def test_relative_motion_moves_source_by_scaled_driving_displacement():
    src = _kp(SQUARE)
    ini = _kp([[[x * 2, y * 2] for x, y in SQUARE[0]]])
    shift = torch.tensor([0.2, -0.1])
    rot = torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    drv = _kp(ini["value"] + shift, rot.expand(1, 4, 2, 2).clone())
    out = normalize_kp(src, drv, ini, adapt_movement_scale=True, use_relative_movement=True,
                       use_relative_jacobian=True)
    assert torch.allclose(out["value"], src["value"] + 0.5 * shift, atol=1e-6)
    assert torch.allclose(out["jacobian"], rot.expand(1, 4, 2, 2), atol=1e-6)
    unscaled = transfer_motion(src, drv, ini, mode="relative", adapt_movement_scale=False)
    assert torch.allclose(unscaled["value"], src["value"] + shift, atol=1e-6)
    # driving == initial frame: relative motion reproduces the source keypoints
    same = transfer_motion(src, ini, ini, mode="relative")
    assert torch.allclose(same["value"], src["value"]) and torch.allclose(same["jacobian"], src["jacobian"])


# --- equivariance -----------------------------------------------------------------------------------
def test_tps_jacobian_matches_autograd():
    t = RandomTPS.sample(3, 0.1, 0.05, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (torch.rand(3, 7, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
    y = t.warp_coordinates(z)
    gx = torch.autograd.grad(y[..., 0].sum(), z, retain_graph=True)[0]
    gy = torch.autograd.grad(y[..., 1].sum(), z)[0]
    assert torch.allclose(torch.stack([gx, gy], -2), t.jacobian(z), atol=1e-10)


def test_identity_transform_is_exact():
    t = RandomTPS.identity(2)
    img = torch.rand(2, 3, 16, 16)
    assert torch.allclose(t.warp_image(img), img, atol=1e-6)
    pts = torch.rand(2, 5, 2) * 2 - 1
    assert torch.equal(t.warp_coordinates(pts), pts)
    assert torch.equal(t.jacobian(pts), torch.eye(2).expand(2, 5, 2, 2))


def test_warp_image_agrees_with_warp_coordinates():
    # X'(z) = X(T(z)): a bright dot at T(p) in X appears at p in X'
    t = RandomTPS.sample(1, 0.05, 0.005, 5, generator=torch.Generator().manual_seed(3))
    size = 65
    from mp_lightning.networks.blocks import kp2gaussian

    p = torch.tensor([[[0.1, -0.2]]])
    img = kp2gaussian(t.warp_coordinates(p), (size, size), 0.005)  # (1, 1, H, W)
    warped = t.warp_image(img)
    idx = warped.flatten().argmax().item()
    y, x = divmod(idx, size)
    found = torch.tensor([2 * x / (size - 1) - 1, 2 * y / (size - 1) - 1])
    assert (found - p[0, 0]).abs().max() <= 2 / (size - 1) + 1e-6


def test_losses_zero_for_identity_positive_otherwise():
    torch.manual_seed(0)
    det = KPDetector.from_config(FOMMNetConfig.tiny()).eval()
    with torch.no_grad():  # make the jacobians non-trivial
        det.jacobian.weight.normal_(0, 0.01)
    drv = torch.rand(2, 3, 64, 64)
    kp_d = det(drv)
    ident = equivariance_losses(det, drv, kp_d, transform=RandomTPS.identity(2))
    assert ident["equivariance_value"].item() < 1e-5
    assert ident["equivariance_jacobian"].item() < 1e-4
    rnd = equivariance_losses(det, drv, kp_d, params=TransformParams(sigma_affine=0.1, sigma_tps=0.01))
    assert rnd["equivariance_value"].item() > 1e-3 and rnd["equivariance_jacobian"].item() > 1e-3
    assert rnd["transformed_frame"].shape == drv.shape
    (rnd["equivariance_value"] + rnd["equivariance_jacobian"]).backward()
    assert det.kp.weight.grad is not None and det.kp.weight.grad.abs().sum() > 0


def test_loss_functions_on_known_keypoints():
    t = RandomTPS.sample(2, 0.05, 0.005, 5, generator=torch.Generator().manual_seed(1))
    kp_t = _kp(torch.rand(2, 4, 2) * 1.6 - 0.8)
    mapped = t.warp_keypoints(kp_t)  # perfectly equivariant detections
    assert equivariance_value_loss(mapped, kp_t, t).item() < 1e-6
    assert equivariance_jacobian_loss(mapped, kp_t, t).item() < 1e-5
    assert equivariance_value_loss(kp_t, kp_t, t).item() > 1e-3
    assert equivariance_jacobian_loss(kp_t, kp_t, t).item() > 1e-3
