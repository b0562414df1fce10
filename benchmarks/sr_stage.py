"""Step time and peak memory of the SR stage (tiny and official size), and inference frames/s.

    python benchmarks/sr_stage.py [--sizes tiny official] [--frames 3] [--steps 3] [--device cpu] [--out PATH]

Rows, one per size: one training step (generator forward, L1 + perceptual + style losses, backward, Adam,
EMA update) on batch 1 x T frames, and `upscale_clip` frames/s (EMA net, LQ side = out_size / 2 -> out_size;
official: 256 -> 512). Peak memory: CUDA max allocated on a GPU, the process's peak RSS (ru_maxrss) on CPU.
The perceptual VGG19 is randomly initialised (the ImageNet weights do not change the cost).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench(size: str, frames: int, steps: int, device: torch.device) -> dict:
    from dataclasses import asdict

    from mp_lightning.networks.temporal_sr import TemporalSRConfig
    from mp_lightning.stages.super_resolution import SuperResolutionStage

    net = TemporalSRConfig.tiny() if size == "tiny" else TemporalSRConfig.official()
    stage = SuperResolutionStage(SuperResolutionStage.official_config(net, perceptual={"pretrained": False}))
    stage.to(device).train()
    opt = torch.optim.Adam([p for p in stage.generator.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.99))
    gt = torch.rand(1, frames, 3, net.out_size, net.out_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators / kernels and is not timed
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        losses = stage.losses(stage.run_net(stage.generator, stage.make_lq(gt)), gt)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        stage.update_ema()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    step_s = sum(times[1:]) / max(len(times) - 1, 1)
    peak = _peak_mb(device)
    stage.eval()
    clip = torch.rand(max(frames, 4), 3, net.out_size // 2, net.out_size // 2)
    stage.upscale_clip(clip[:2])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    stage.upscale_clip(clip)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    fps = clip.shape[0] / (time.perf_counter() - t0)
    return {"size": size, "in_side": net.out_size // 2, "out_side": net.out_size, "batch": 1, "frames": frames,
            "train_step_s": round(step_s, 4), "peak_memory_mb": round(peak, 1), "upscale_frames_per_s": round(fps, 3),
            "parameters": sum(p.numel() for p in stage.generator.parameters()), "net": asdict(net)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "official"], choices=["tiny", "official"])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sr_stage.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        row = bench(size, args.frames, args.steps, device)
        rows.append(row)
        print(f"{size:9s} {row['in_side']}->{row['out_side']}  step {row['train_step_s']:.3f} s  "
              f"peak {row['peak_memory_mb']:.0f} MB  upscale {row['upscale_frames_per_s']:.2f} frames/s")
    result = {"device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
