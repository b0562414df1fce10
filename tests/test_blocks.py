"""Shared building blocks: grids, Gaussians, warping conventions, hourglass shapes, norms."""
import pytest
import torch
import torch.nn.functional as F

from mp_lightning.networks.blocks import (
    ADAIN, AntiAliasInterpolation2d, DownBlock2d, Hourglass, LayerNorm2d, ResBlock2d, SameBlock2d, UpBlock2d,
    kp2gaussian, make_coordinate_grid, warp,
)


def test_coordinate_grid_is_align_corners_true_xy():
    g = make_coordinate_grid((3, 5))
    assert g.shape == (3, 5, 2)
    assert torch.allclose(g[0, :, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert torch.allclose(g[:, 0, 1], torch.tensor([-1.0, 0.0, 1.0]))


def test_kp2gaussian_peak_at_point_and_dict_input():
    pts = torch.tensor([[[0.0, 0.0], [1.0, -1.0]]])
    h = kp2gaussian(pts, (5, 5), 0.01)
    assert h.shape == (1, 2, 5, 5)
    assert h[0, 0, 2, 2] == 1 and h[0, 1, 0, 4] == 1
    assert torch.equal(h, kp2gaussian({"value": pts}, (5, 5), 0.01))


def test_warp_identity_grid_and_conventions():
    img = torch.rand(2, 3, 8, 8)
    grid = make_coordinate_grid((8, 8))[None].repeat(2, 1, 1, 1)
    assert torch.allclose(warp(img, grid, align_corners=True), img, atol=1e-6)
    # the official mismatch (align_corners=True grid sampled with False) is not the identity
    assert not torch.allclose(warp(img, grid, align_corners=False, padding_mode="reflection"), img, atol=1e-3)
    # a coarse grid is resized to the image
    small = make_coordinate_grid((4, 4))[None].repeat(2, 1, 1, 1)
    assert warp(img, small).shape == img.shape


def test_layernorm2d_param_shape_and_normalisation():
    ln = LayerNorm2d(4)
    assert ln.weight.shape == (4, 1, 1)
    y = ln(torch.randn(2, 4, 3, 3) * 5 + 2)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)


def test_antialias_downsample_shapes_and_identity():
    aa = AntiAliasInterpolation2d(3, 0.25)
    assert aa.weight.shape == (3, 1, 13, 13)
    x = torch.rand(1, 3, 64, 64)
    assert aa(x).shape == (1, 3, 16, 16)
    assert AntiAliasInterpolation2d(3, 1)(x) is x
    const = torch.ones(1, 3, 64, 64)
    assert torch.allclose(aa(const)[..., 4:-4, 4:-4], torch.ones(1, 3, 8, 8), atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "instance", "adain", "none"])
def test_blocks_shapes(norm):
    cond = torch.randn(2, 6) if norm == "adain" else None
    kw = dict(norm=norm, cond_dim=6 if norm == "adain" else 0)
    x = torch.randn(2, 4, 8, 8)
    assert SameBlock2d(4, 5, **kw)(x, cond).shape == (2, 5, 8, 8)
    assert DownBlock2d(4, 5, same_block=True, **kw)(x, cond).shape == (2, 5, 4, 4)
    assert UpBlock2d(4, 5, **kw)(x, cond).shape == (2, 5, 16, 16)


def test_adain_requires_code():
    with pytest.raises(ValueError):
        SameBlock2d(4, 4, norm="adain", cond_dim=3)(torch.randn(1, 4, 4, 4))
    assert ADAIN(4, 3)(torch.randn(2, 4, 4, 4), torch.randn(2, 3)).shape == (2, 4, 4, 4)


def test_resblock_keys():
    assert sorted(k.split(".")[0] for k in ResBlock2d(4).state_dict() if k.endswith("weight")) == [
        "conv1", "conv2", "norm1", "norm2"]


def test_hourglass_return_all_pyramid_and_stop_level():
    h = Hourglass(8, 3, num_blocks=3, max_features=32, norm="instance")
    out, levels = h(torch.rand(1, 3, 32, 32), return_all=True)
    assert [tuple(t.shape[1:]) for t in levels] == [(32, 4, 4), (32, 8, 8), (16, 16, 16), (11, 32, 32)]
    assert out.shape[1] == h.out_filters == 11
    h2 = Hourglass(8, 3, num_blocks=3, max_features=32, stop_level=1, norm="adain", cond_dim=5, same_block=True)
    assert h2(torch.rand(2, 3, 32, 32), torch.randn(2, 5)).shape == (2, h2.out_filters, 16, 16)
