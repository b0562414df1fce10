"""TemporalSRGenerator: official key layout and parameter counts, switches, batching, gradients."""
from pathlib import Path

import pytest
import torch

from mp_lightning.errors import ConfigError
from mp_lightning.networks.temporal_sr import TemporalSRConfig, TemporalSRGenerator

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MANIFEST = REFERENCE / "metaportrait" / "sr_temporal_gfpgan.tsv"
TEMPORAL = ("window_down.", "recurrent_forward.")

OFFICIAL_TOTAL = 154_690_396  # NOTES.md 2.5
OFFICIAL_TRAINABLE = 124_413_813
OFFICIAL_NOISE_ELEMENTS = 699_024


def _meta_net(**overrides):
    # parameters on the meta device: shapes and counts without allocating 620 MB
    with torch.device("meta"):
        return TemporalSRGenerator(TemporalSRConfig(**overrides))


def _count(net, trainable_only=False):
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def _tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return TemporalSRGenerator(TemporalSRConfig.tiny(**overrides))


def _excite_temporal(net, seed=1):
    """Random non-zero last convs so the window modules actually mix frames."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in list(net.window_down) + list(net.recurrent_forward):
            module.conv2.weight.copy_(torch.randn(module.conv2.weight.shape, generator=gen) * 0.05)
            module.conv2.bias.copy_(torch.randn(module.conv2.bias.shape, generator=gen) * 0.05)


def _clips(b=1, t=3, size=32, seed=0):
    return torch.rand(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.skipif(not MANIFEST.is_file(), reason="reference manifest absent")
def test_state_dict_matches_official_manifest_in_order():
    rows = [line.rstrip("\n").split("\t") for line in MANIFEST.read_text().splitlines()[1:] if line.strip()]
    sd = _meta_net().state_dict()
    assert len(rows) == 341
    assert list(sd) == [r[0] for r in rows]
    for key, shape, dtype in rows:
        assert "x".join(map(str, sd[key].shape)) == shape, key
        assert str(sd[key].dtype).replace("torch.", "") == dtype, key
    assert sum(1 for k in sd if k.startswith("stylegan_decoder.noises.")) == 15


def test_official_parameter_counts():
    net = _meta_net()
    assert _count(net) == OFFICIAL_TOTAL
    assert _count(net, trainable_only=True) == OFFICIAL_TRAINABLE
    assert sum(b.numel() for b in net.buffers()) == OFFICIAL_NOISE_ELEMENTS
    assert len(net.decoder_parameter_names()) > 0
    assert all(not p.requires_grad for p in net.stylegan_decoder.parameters())
    unfrozen = _meta_net(freeze_decoder=False)
    assert _count(unfrozen, trainable_only=True) == OFFICIAL_TOTAL


def test_per_frame_variant_is_the_gfpgan_layout():
    full, per_frame = _meta_net(), _meta_net(temporal=False)
    temporal = sum(p.numel() for n, p in full.named_parameters() if n.startswith(TEMPORAL))
    # NOTES.md 2.4: temporal modules add 68.2 M, the GFPGANv1Clean-compatible part is about 86.4 M
    assert round(temporal / 1e6, 1) == 68.2
    assert _count(per_frame) == OFFICIAL_TOTAL - temporal
    assert round(_count(per_frame) / 1e6, 1) == 86.4
    assert list(per_frame.state_dict()) == [k for k in full.state_dict() if not k.startswith(TEMPORAL)]
    assert per_frame.temporal_parameter_names() == []


def test_tiny_forward_shapes_and_backward_respects_frozen_decoder():
    net = _tiny()
    lq = _clips(b=2, t=3)
    out = net(lq, return_intermediates=True)
    assert out["output"].shape == (2, 3, 3, 64, 64)
    assert out["style_code"].shape == (2, 3, net.num_latent, 32)
    assert [r.shape[-1] for r in out["rgbs"]] == [8, 16, 32, 64]
    (out["output"].mean() + sum(r.mean() for r in out["rgbs"])).backward()
    assert all(p.grad is None for p in net.stylegan_decoder.parameters())
    for name, p in net.named_parameters():
        if not name.startswith("stylegan_decoder."):
            assert p.grad is not None, name
    # zero-initialised window modules: their last conv still learns (its gradient is non-zero)
    assert net.window_down[0].conv2.weight.grad.abs().sum() > 0

    trainable = _tiny(freeze_decoder=False)
    trainable(lq).mean().backward()
    assert trainable.stylegan_decoder.style_convs[0].modulated_conv.weight.grad.abs().sum() > 0
    # the style MLP is unused when the encoder emits latents directly (input_is_latent)
    assert trainable.stylegan_decoder.style_mlp[1].weight.grad is None


def test_zero_initialised_temporal_modules_equal_per_frame_network():
    temporal = _tiny(seed=0).eval()
    per_frame = _tiny(seed=5, temporal=False).eval()
    missing, unexpected = per_frame.load_state_dict(temporal.state_dict(), strict=False)
    assert missing == [] and all(k.startswith(TEMPORAL) for k in unexpected)
    lq = _clips(b=2, t=4)
    with torch.no_grad():
        a, b = temporal(lq), per_frame(lq)
        single = per_frame(lq[:, 2:3])  # one frame alone: per-frame means no dependence on neighbours
    assert torch.equal(a, b)
    torch.testing.assert_close(single[:, 0], b[:, 2], atol=1e-6, rtol=1e-6)


def test_temporal_modules_mix_neighbours_within_a_clip_only():
    net = _tiny().eval()
    _excite_temporal(net)
    lq = _clips(b=2, t=3)
    changed = lq.clone()
    changed[0, 0] = 1 - changed[0, 0]
    with torch.no_grad():
        base, after = net(lq), net(changed)
        alone = torch.cat([net(lq[i:i + 1]) for i in range(2)])
    assert (after[0, 1] - base[0, 1]).abs().max() > 1e-4  # neighbour frame of the same clip moves
    assert torch.equal(after[1], base[1])  # the other clip in the batch is untouched
    torch.testing.assert_close(alone, base, atol=1e-5, rtol=1e-5)  # B folding == one clip at a time

    per_frame = _tiny(temporal=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(per_frame(changed)[0, 1], per_frame(lq)[0, 1], atol=0, rtol=0)


def test_window_radius_two():
    net = _tiny(window_radius=2).eval()
    assert net.window_down[0].conv1.in_channels == 5 * net.window_down[0].conv2.out_channels
    _excite_temporal(net)
    lq = _clips(t=5)
    changed = lq.clone()
    changed[0, 0] = 0.0
    with torch.no_grad():
        assert net(lq).shape == (1, 5, 3, 64, 64)
        assert net(lq[:, :1]).shape == (1, 1, 3, 64, 64)  # T = 1: the window is the frame replicated
    # one module already reaches 2 frames away (a radius-1 stack would need two)
    feat = torch.randn(5, net.window_down[0].conv2.out_channels, 8, 8)
    moved = feat.clone()
    moved[0] += 1
    delta = net.window_down[0](moved, 5) - net.window_down[0](feat, 5)
    assert delta[2].abs().max() > 0 and delta[3].abs().max() == 0


def test_full_resolution_input_clamp_and_noise_modes():
    net = _tiny().eval()
    with torch.no_grad():
        net.stylegan_decoder.style_convs[0].weight.fill_(0.5)  # non-zero noise strength
        lq_hr = _clips(t=2, size=64)
        assert net(lq_hr).shape == (1, 2, 3, 64, 64)  # already at out_size: no x2 upsampling
        raw, clamped = net(lq_hr), net(lq_hr, clamp=True)
        torch.testing.assert_close(clamped, raw.clamp(0, 1))
        assert torch.equal(net(lq_hr), raw)  # 'zero' noise: deterministic
        stored = net(lq_hr, noise_mode="stored")
        assert torch.equal(stored, net(lq_hr, noise_mode="stored")) and not torch.equal(stored, raw)
        assert not torch.equal(net(lq_hr, noise_mode="random"), net(lq_hr, noise_mode="random"))


def test_invalid_inputs_and_configs():
    net = _tiny()
    with pytest.raises(ValueError, match="B, T, 3, H, W"):
        net(torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="side 32 or 64"):
        net(torch.rand(1, 2, 3, 48, 48))
    with pytest.raises(ConfigError, match="power of 2"):
        TemporalSRGenerator(TemporalSRConfig.tiny(out_size=96))
    with pytest.raises(ConfigError, match="noise_mode"):
        TemporalSRGenerator(TemporalSRConfig.tiny(noise_mode="gauss"))
    with pytest.raises(ConfigError, match="window_radius"):
        TemporalSRGenerator(TemporalSRConfig.tiny(window_radius=0))
    with pytest.raises(ConfigError, match="SFT"):
        TemporalSRGenerator(TemporalSRConfig.tiny(narrow=0.01))


def test_official_defaults():
    cfg = TemporalSRConfig.official()
    assert (cfg.out_size, cfg.num_style_feat, cfg.channel_multiplier, cfg.narrow) == (512, 512, 2, 1)
    assert cfg.sft_half and cfg.different_w and cfg.input_is_latent and cfg.freeze_decoder
    assert cfg.noise_mode == "zero" and cfg.temporal and cfg.window_radius == 1 and cfg.zero_init_temporal
