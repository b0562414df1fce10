"""Chunked inference of a temporal network over long clips, with overlapping chunks cross-faded in time.

The official MetaPortrait SR test loop cuts a clip into chunks of 16 frames without overlap, so the frames on
either side of a chunk border are computed from disjoint temporal contexts and a visible jump appears there.
Here consecutive chunks overlap and the overlap is blended with linear cross-fade weights: the weight of a chunk
falls to near zero at its inner borders, where its temporal context is truncated, and each output frame is a
convex combination of the chunks that cover it.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple, Union

import torch

__all__ = ["chunk_spans", "chunk_weights", "chunked_temporal_inference"]


def chunk_spans(num_frames: int, chunk: int = 16, overlap: int = 4) -> List[Tuple[int, int]]:
    """Half-open frame ranges [start, end) of `chunk` frames covering `num_frames`, spread evenly so that
    consecutive chunks overlap by at least `overlap` frames (one span if the clip fits in one chunk).
    With overlap 0 the chunks are back to back and the last one may be shorter (official behaviour)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not 0 <= overlap < chunk:
        raise ValueError(f"overlap must be in [0, chunk), got overlap={overlap}, chunk={chunk}")
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    if num_frames <= chunk:
        return [(0, num_frames)]
    if overlap == 0:  # the official test loop: back-to-back chunks, the last one possibly shorter
        return [(s, min(s + chunk, num_frames)) for s in range(0, num_frames, chunk)]
    count = math.ceil((num_frames - overlap) / (chunk - overlap))
    # even spacing: every overlap is >= the requested one and the last chunk ends on the last frame
    starts = [round(k * (num_frames - chunk) / (count - 1)) for k in range(count)]
    return [(s, s + chunk) for s in starts]


def chunk_weights(spans: List[Tuple[int, int]]) -> List[torch.Tensor]:
    """Per-frame blend weight of each span (float32, length end - start): 1 inside, a linear ramp over the part
    shared with the previous / next span. In a region shared by two spans the two ramps sum to 1."""
    weights = []
    for k, (start, end) in enumerate(spans):
        t = torch.arange(start, end, dtype=torch.float32)
        w = torch.ones(end - start)
        if k > 0:
            shared = max(spans[k - 1][1] - start, 0)
            w = torch.minimum(w, (t - start + 1) / (shared + 1))
        if k + 1 < len(spans):
            shared = max(end - spans[k + 1][0], 0)
            w = torch.minimum(w, (end - t) / (shared + 1))
        weights.append(w)
    return weights


def chunked_temporal_inference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    frames: torch.Tensor,
    chunk: int = 16,
    overlap: int = 4,
    output_device: Optional[Union[str, torch.device]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> torch.Tensor:
    """Runs `fn` on overlapping chunks of a clip and cross-fades the overlaps.

    frames: (T, C, H, W) or (B, T, C, H, W), any value range. `fn` receives clips (B, t, C, H, W) (B = 1 for
    a 4-D input) with t <= chunk and must return (B, t, ...) (e.g. (B, t, 3, 2H, 2W) for SR).
    Returns (T, ...) or (B, T, ...) matching the input layout, in `fn`'s dtype, on `output_device`
    (default: the device of `fn`'s output). Frames covered by a single chunk equal `fn`'s output for that chunk
    exactly; with overlap 0 this is the official non-overlapping chunking. `progress(done, total)` is called
    after each chunk with frame counts.
    """
    single = frames.dim() == 4
    clip = frames.unsqueeze(0) if single else frames
    if clip.dim() != 5:
        raise ValueError(f"expected frames (T, C, H, W) or (B, T, C, H, W), got {tuple(frames.shape)}")
    num_frames = clip.shape[1]
    spans = chunk_spans(num_frames, chunk, overlap)
    weights = chunk_weights(spans)

    total: Optional[torch.Tensor] = None
    weight_sum: Optional[torch.Tensor] = None
    for (start, end), w in zip(spans, weights):
        out = fn(clip[:, start:end])
        if out.dim() < 2 or out.shape[:2] != (clip.shape[0], end - start):
            raise ValueError(f"fn must return (B, t, ...) = ({clip.shape[0]}, {end - start}, ...) for a chunk, "
                             f"got {tuple(out.shape)}")
        if output_device is not None:
            out = out.to(output_device)
        if total is None:
            total = out.new_zeros((out.shape[0], num_frames, *out.shape[2:]))
            weight_sum = torch.zeros(num_frames, dtype=out.dtype, device=out.device)
        w = w.to(device=out.device, dtype=out.dtype)
        total[:, start:end] += out * w.view(1, -1, *([1] * (out.dim() - 2)))
        weight_sum[start:end] += w
        if progress is not None:
            progress(end, num_frames)
    result = total / weight_sum.view(1, -1, *([1] * (total.dim() - 2)))
    return result[0] if single else result
