"""Train-step time, peak memory and inference speed of every stage, at tiny and at official size.

Each measurement runs in its own process (peak RSS is per process), through the real code path:
the stage's own `training_step` driven by a Lightning Trainer (batch 1 by default), on synthetic data
written at the stage's resolution. Prints a table and writes JSON.

    python benchmarks/stages.py                      # everything (official sizes take minutes on CPU)
    python benchmarks/stages.py --only warp_tiny refine_tiny --steps 5
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
OFFLINE = ["model.perceptual.pretrained=false"]

# name -> (experiment, overrides); official sizes keep the official networks, only pretrained
# backbones are random (their speed is the same) and precision is fp32 on CPU
CASES = {
    "warp_tiny": (EXP / "metaportrait/warp_tiny.yaml", []),
    "warp_official": (EXP / "metaportrait/warp.yaml", OFFLINE),
    "refine_tiny": (EXP / "metaportrait/refine_tiny.yaml", []),
    "refine_official": (EXP / "metaportrait/refine.yaml", OFFLINE + ["model.identity.pretrained=false"]),
    "fomm_tiny": (EXP / "baselines/fomm_tiny.yaml", []),
    "fomm_official": (EXP / "baselines/fomm_vox256.yaml", OFFLINE),
    "pirender_tiny": (EXP / "baselines/pirender_tiny.yaml", ["model.warp_steps=0"]),  # full-phase steps
    "pirender_official": (EXP / "baselines/pirender_face.yaml", OFFLINE + ["model.warp_steps=0"]),
    "sr_tiny": (EXP / "metaportrait/sr_tiny.yaml", []),
    "sr_official": (EXP / "metaportrait/sr.yaml", OFFLINE),
}


def _measure(name: str, steps: int, frames: int, batch: int, data_dir: Path) -> dict:
    """Runs inside the child process."""
    import lightning as L
    import torch

    from mp_lightning.config.compose import compose
    from mp_lightning.runs.training import build_datamodule, build_stage, connect_stage_and_data

    experiment, extra = CASES[name]
    base = compose(experiment, extra)
    size = int(base.data.image_size)
    root = data_dir / f"s{size}"
    if not (root / "landmarks.json").is_file():
        from datamodules import write_synthetic_dataset

        write_synthetic_dataset(root, identities=4, videos_per_identity=1, clips_per_video=1, frames=16,
                                size=size, seed=0, test_fraction=0.5, workers=1)
    cfg = compose(experiment, [*extra, f"data.root={root}", f"data.batch_size={batch}", "data.num_workers=0",
                               "data.augment_flip=false", "trainer.accelerator=cpu", "trainer.precision=32-true",
                               "logger.type=none"])
    dm = build_datamodule(cfg)
    stage = build_stage(cfg, dm)
    connect_stage_and_data(stage, dm)
    params = sum(p.numel() for p in stage.parameters())
    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *a):
            self.t = time.perf_counter()

        def on_train_batch_end(self, *a):
            times.append(time.perf_counter() - self.t)

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps + 1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Timer()],
                        enable_model_summary=False)
    trainer.fit(stage, datamodule=dm)
    train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = sorted(times[1:])[len(times[1:]) // 2]  # median, first (warm-up) step dropped

    stage.eval()
    batch1 = next(iter(dm.val_dataloader()[0]))
    batch1 = {k: (v[:1] if torch.is_tensor(v) else v[:1] if isinstance(v, list) else v) for k, v in batch1.items()}
    with torch.no_grad():
        stage(batch1)
        t0 = time.perf_counter()
        for _ in range(frames):
            out = stage(batch1)
        elapsed = time.perf_counter() - t0
    pred = out["prediction"]
    frames_per_call = pred.shape[1] if pred.ndim == 5 else pred.shape[0]
    return {
        "case": name, "stage": cfg.stage, "image_size": size, "batch": batch, "parameters": params,
        "train_step_s": step, "train_steps_timed": len(times) - 1, "peak_rss_mb": train_rss,
        "inference_fps": frames * frames_per_call / elapsed, "output_size": list(pred.shape[-2:]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    parser.add_argument("--frames", type=int, default=3, help="timed inference calls")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stages.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child, args.steps, args.frames, args.batch, Path(args.data))))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as data:
        for name in args.only:
            print(f"... {name}", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--data", data, "--steps", str(args.steps),
                                   "--frames", str(args.frames), "--batch", str(args.batch)],
                                  capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                results.append({"case": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"})
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'case':18s} {'size':>5s} {'params':>12s} {'train step':>11s} {'peak RSS':>9s} {'infer fps':>9s}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:18s} ERROR {r['error']}")
            continue
        print(f"{r['case']:18s} {r['image_size']:5d} {r['parameters']:12,d} {r['train_step_s']:10.3f}s "
              f"{r['peak_rss_mb']:8.0f}M {r['inference_fps']:9.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "processor": platform.processor(),
                               "threads": __import__("torch").get_num_threads(), "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
