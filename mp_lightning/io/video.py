"""Reading and writing mp4 files with PyAV (torchvision.io has no video API any more): the one writer of the
framework, for animations, previews and the synthetic dataset alike.

Torch is not imported here: the synthetic dataset's worker processes write clips without it (a tensor can only
be passed where torch is already imported).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.is_tensor(value)


def to_uint8_frames(frames) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] (tensor or array) or (T, H, W, 3) uint8 -> (T, H, W, 3) uint8."""
    if _is_tensor(frames):
        import torch

        frames = frames.detach().float().cpu()
        if frames.ndim == 4 and frames.shape[1] == 3:
            frames = frames.permute(0, 2, 3, 1)
        return (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        if frames.ndim == 4 and frames.shape[1] == 3:
            frames = frames.transpose(0, 2, 3, 1)
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    return frames


def write_video(path: str | Path, frames, fps: int = 25, crf: int = 18, gop: int = 10, *,
                preset: Optional[str] = None, threads: Optional[int] = None, fixed_gop: bool = False) -> Path:
    """Write H.264 mp4 (yuv420p). A short GOP and no B-frames keep random access cheap for training.

    `gop` is the longest keyframe interval; `fixed_gop` makes it exact (a keyframe every `gop` frames, no scene
    cut), as the synthetic dataset wants. `preset` and `threads` are x264's (None: its defaults); one thread
    gives the same bytes on every machine.
    """
    import av

    frames = to_uint8_frames(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = frames[:, : h - h % 2, : w - w % 2]
        h, w = frames.shape[1:3]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        options = {"crf": str(crf)}
        if preset is not None:
            options["preset"] = preset
        if threads is not None:
            options["threads"] = str(threads)
        if fixed_gop:
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"
        else:
            options.update({"g": str(gop), "bf": "0"})
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_fps(path: str | Path) -> float:
    """The average frame rate of a video's first stream (25 when the file does not say)."""
    import av

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 25.0


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video as (T, H, W, 3) uint8 (for tools and tests; training reads with decord)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def write_image(path: str | Path, image) -> Path:
    """Write one (3, H, W) float image in [0, 1] (or (H, W, 3) uint8) as PNG."""
    from PIL import Image

    pixels = to_uint8_frames(image[None] if _is_tensor(image) else np.asarray(image)[None])[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path
