"""Chunked temporal inference: chunk layout, blend weights, equality away from borders, no seam at borders."""
import math

import pytest
import torch
import torch.nn.functional as F

from mp_lightning.networks.chunked_inference import chunk_spans, chunk_weights, chunked_temporal_inference
from mp_lightning.networks.temporal_sr import TemporalSRConfig, TemporalSRGenerator


def _smooth_clip(num_frames=40, size=8, channels=3):
    """Frames that drift slowly and smoothly over time: (T, C, size, size) in [0, 1]."""
    t = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1, 1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    frames = (0.5 + 0.3 * torch.sin(2 * math.pi * (xx + yy) + 0.15 * t)
              + 0.1 * torch.cos(3 * math.pi * xx - 0.1 * t))
    return frames.expand(num_frames, channels, size, size).contiguous()


def window_operator(radius=2):
    """A temporal operator with a known receptive field (+-radius) whose clip edges (replicate padding)
    differ from its interior, like the SR window modules; it also upsamples x2 as SR does."""
    taps = torch.tensor([0.05, 0.15, 0.35, 0.3, 0.15])[: 2 * radius + 1]

    def fn(clip):  # (B, t, C, H, W) -> (B, t, C, 2H, 2W)
        t = clip.shape[1]
        ids = (torch.arange(t)[:, None] + torch.arange(-radius, radius + 1)[None]).clamp(0, t - 1)
        mixed = (clip[:, ids] * taps.view(1, 1, -1, 1, 1, 1)).sum(2)
        up = F.interpolate(mixed.flatten(0, 1), scale_factor=2, mode="nearest")
        return torch.tanh(2 * up).view(*clip.shape[:2], *up.shape[1:])

    return fn


def _interior(spans, num_frames, reach):
    """Frames covered by one chunk only and farther than `reach` from that chunk's inner borders."""
    frames = []
    for t in range(num_frames):
        covering = [(s, e) for s, e in spans if s <= t < e]
        if len(covering) != 1:
            continue
        s, e = covering[0]
        if (s == 0 or t - s >= reach) and (e == num_frames or e - 1 - t >= reach):
            frames.append(t)
    return frames


def _jumps(video):
    return (video[:, 1:] - video[:, :-1]).abs().mean(dim=tuple(range(2, video.dim())))[0]


def _seam_ratio(video, spans, num_frames):
    """Largest frame-to-frame change across a chunk border over the largest change elsewhere."""
    cuts = {s for s, _ in spans if s > 0} | {e for _, e in spans if e < num_frames}
    jumps = _jumps(video)
    at_cut = torch.stack([jumps[c - 1] for c in cuts])
    elsewhere = torch.stack([jumps[i] for i in range(num_frames - 1) if i + 1 not in cuts])
    return (at_cut.max() / elsewhere.max()).item()


@pytest.mark.parametrize("num_frames,chunk,overlap", [(40, 16, 4), (41, 16, 4), (100, 16, 4), (17, 16, 8),
                                                      (5, 16, 4), (33, 8, 3), (16, 16, 4)])
def test_spans_cover_the_clip_with_enough_overlap(num_frames, chunk, overlap):
    spans = chunk_spans(num_frames, chunk, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == num_frames
    assert all(e - s == min(chunk, num_frames) for s, e in spans)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 and e0 - s1 >= overlap
    weights = chunk_weights(spans)
    total = torch.zeros(num_frames)
    for (s, e), w in zip(spans, weights):
        assert w.shape == (e - s,) and (w > 0).all() and (w <= 1).all()
        total[s:e] += w
    torch.testing.assert_close(total, torch.ones(num_frames))


def test_zero_overlap_is_the_official_back_to_back_chunking():
    assert chunk_spans(40, 16, 0) == [(0, 16), (16, 32), (32, 40)]
    with pytest.raises(ValueError):
        chunk_spans(40, 16, 16)
    with pytest.raises(ValueError):
        chunk_spans(40, 0, 0)


def test_per_frame_function_is_reproduced_for_both_layouts():
    frames = _smooth_clip(37)
    double = lambda clip: torch.cat([clip, 1 - clip], dim=2)  # noqa: E731  per-frame, changes channels
    expected = double(frames[None])
    torch.testing.assert_close(chunked_temporal_inference(double, frames, 8, 3), expected[0])
    batch = torch.stack([frames, frames.flip(0)])
    done = []
    out = chunked_temporal_inference(double, batch, 8, 3, progress=lambda d, n: done.append((d, n)))
    torch.testing.assert_close(out, double(batch))
    assert done[-1] == (37, 37) and len(done) == len(chunk_spans(37, 8, 3))


def test_equals_whole_clip_away_from_borders_and_has_no_seam():
    radius, num_frames = 2, 40
    fn = window_operator(radius)
    frames = _smooth_clip(num_frames)
    whole = fn(frames[None])
    for overlap in (4, 6):
        spans = chunk_spans(num_frames, 16, overlap)
        out = chunked_temporal_inference(fn, frames, chunk=16, overlap=overlap)[None]
        interior = _interior(spans, num_frames, radius)
        assert len(interior) >= 10
        assert torch.equal(out[:, interior], whole[:, interior])
        assert _seam_ratio(out, spans, num_frames) <= 1.1  # measured 1.07 (hard cuts: 1.72)
        assert (out - whole).abs().max() < 0.5 * (chunked_temporal_inference(fn, frames, 16, 0)[None]
                                                  - whole).abs().max()
    # the check is sensitive: hard cuts without overlap (official test loop) do leave a seam
    hard = chunked_temporal_inference(fn, frames, chunk=16, overlap=0)[None]
    assert _seam_ratio(hard, chunk_spans(num_frames, 16, 0), num_frames) > 1.3


def test_tiny_temporal_sr_network_chunked():
    torch.manual_seed(0)
    # out_size 16: 2 window modules in the encoder, 2 in the decoder -> receptive field +-4 frames
    net = TemporalSRGenerator(TemporalSRConfig.tiny(out_size=16, narrow=1 / 8, zero_init_temporal=False)).eval()
    with torch.no_grad():
        for module in list(net.window_down) + list(net.recurrent_forward):
            module.conv2.weight.mul_(5)  # stronger temporal mixing: border effects clearly visible
    num_frames, reach = 40, 4
    frames = _smooth_clip(num_frames)
    with torch.no_grad():
        whole = net(frames[None])
        blended = chunked_temporal_inference(net, frames, chunk=16, overlap=4)[None]
        hard = chunked_temporal_inference(net, frames, chunk=16, overlap=0)[None]
    assert blended.shape == whole.shape == (1, num_frames, 3, 16, 16)
    spans = chunk_spans(num_frames, 16, 4)
    interior = _interior(spans, num_frames, reach)
    torch.testing.assert_close(blended[:, interior], whole[:, interior], atol=1e-5, rtol=1e-5)
    assert _seam_ratio(blended, spans, num_frames) <= 1.1
    assert _seam_ratio(hard, chunk_spans(num_frames, 16, 0), num_frames) > 1.3
