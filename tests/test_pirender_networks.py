"""PIRender networks: the official `FaceGenerator` layout (reference pirender/net_G.tsv), sizes and behaviour."""
from __future__ import annotations

import pytest
import torch

from mp_lightning.networks.pirender import PIRenderGenerator, PIRenderNetConfig
from tests.conftest import REFERENCE

MANIFEST = REFERENCE / "pirender" / "net_G.tsv"

# a CPU-size generator (pirender_tiny.yaml uses the same widths)
TINY = PIRenderNetConfig(descriptor_nc=32, max_nc=32, warp_base_nc=8, warp_encoder_layers=3, warp_decoder_layers=2,
                         edit_base_nc=8, edit_layers=2, edit_num_res_blocks=1)


def _manifest():
    rows = [line.split("\t") for line in MANIFEST.read_text().strip().splitlines()[1:]]
    return [(key, tuple(int(s) for s in shape.split("x"))) for key, shape, _ in rows]


@pytest.mark.skipif(not MANIFEST.is_file(), reason="reference manifest not present")
def test_official_generator_matches_manifest_keys_shapes_and_order():
    net = PIRenderGenerator()
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert ours == _manifest()


def test_official_parameter_counts():
    net = PIRenderGenerator()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net) == 22_519_109
    assert (count(net.mapping_net), count(net.warpping_net), count(net.editing_net)) == (721_664, 12_707_138, 9_090_307)
    assert not list(net.buffers())


def test_tiny_forward_shapes_and_ranges():
    torch.manual_seed(0)
    net = PIRenderGenerator(TINY).eval()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    semantics = torch.randn(2, 73, 27)
    with torch.no_grad():
        out = net(image, semantics)
        warp_only = net(image, semantics, stage="warp")
    assert out["descriptor"].shape == (2, 32, 1)
    assert out["flow_field"].shape == (2, 2, 32, 32)  # 1/2^(3 - 2 + 1) of the image with 3 encoder, 2 decoder levels
    assert out["warp_image"].shape == out["fake_image"].shape == (2, 3, 64, 64)
    assert out["fake_image"].abs().max() <= 1
    assert "fake_image" not in warp_only
    torch.testing.assert_close(warp_only["warp_image"], out["warp_image"], atol=0, rtol=0)


def test_zero_flow_warps_to_the_image_itself():
    net = PIRenderGenerator(TINY).eval()
    torch.nn.init.zeros_(net.warpping_net.flow_out[2].weight)
    torch.nn.init.zeros_(net.warpping_net.flow_out[2].bias)
    ramp = torch.linspace(-1, 1, 64)
    image = torch.stack([ramp.view(1, 64).expand(64, 64), ramp.view(64, 1).expand(64, 64), torch.zeros(64, 64)])[None]
    with torch.no_grad():
        out = net(image, torch.randn(1, 73, 27), stage="warp")
    # an align_corners=True grid sampled with align_corners=False (official) is close to, not exactly, the identity
    inner = (out["warp_image"] - image)[..., 4:-4, 4:-4]
    assert inner.abs().mean() < 0.05


def test_official_residual_block_quirk_is_a_switch():
    """Official: conv1/norm1 of the editing decoder's residual blocks do not reach the output; `official_res_block=False`
    uses them (same weights, different output)."""
    torch.manual_seed(0)
    official = PIRenderGenerator(TINY).eval()
    fixed = PIRenderGenerator(PIRenderNetConfig(**{**TINY.__dict__, "official_res_block": False})).eval()
    fixed.load_state_dict(official.state_dict())
    image, semantics = torch.rand(1, 3, 64, 64) * 2 - 1, torch.randn(1, 73, 27)
    with torch.no_grad():
        a, b = official(image, semantics)["fake_image"], fixed(image, semantics)["fake_image"]
        official.editing_net.decoder.res0.res0.conv1.weight.mul_(3)
        c = official(image, semantics)["fake_image"]
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(a, c, atol=0, rtol=0)


def test_backward_reaches_every_trainable_parameter_and_only_those():
    torch.manual_seed(0)
    net = PIRenderGenerator(TINY)
    out = net(torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(2, 73, 27))
    (out["fake_image"].square().mean() + out["flow_field"].square().mean()).backward()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    assert trainable == with_grad
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(".conv1." in n or ".norm1." in n for n in frozen)


def test_mapping_net_refuses_short_windows():
    net = PIRenderGenerator(TINY)
    with pytest.raises(ValueError, match="windows of >= 25 frames"):
        net.mapping_net(torch.randn(1, 73, 13))
