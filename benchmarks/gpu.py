"""Our stages on a GPU at the official size: train-step time, peak GPU memory, batch-1 inference and
end-to-end training samples/s with the real DataModule.

    python benchmarks/gpu.py                                         # warp, refine, fomm, sr; fp32, batch 8
    python benchmarks/gpu.py --precision 16-mixed --stages warp refine --channels-last
    python benchmarks/gpu.py --precision bf16-mixed --compile --steps 20
    python benchmarks/gpu.py --device cpu --tiny --steps 2           # smoke mode (CI): tiny configs, CPU

Each stage runs in its own process, through the real code path (Lightning Trainer, the stage's own
`training_step`, its precision plugin), on synthetic data (`datamodules.write_synthetic_dataset`) written
at the stage's resolution. Official sizes keep the official networks; only pretrained backbones (VGG19,
facenet) are random, which changes no timing. Per stage:

  step ms     median time of one training step on a batch already on the device (CUDA-synchronised
              before and after each step; the first `--warmup` steps are dropped)
  peak MiB    torch.cuda.max_memory_allocated over those timed steps (CPU: the process's peak RSS)
  infer ms    median forward at batch 1 in eval mode under the same precision (no_grad)
  samples/s   end to end: `trainer.fit` with the real VoxCelebDataModule (`--workers` > 0 DataLoader
              workers, pinned memory on CUDA), batch `--batch-size`, after the warm-up steps
  data wait   share of that end-to-end time the step loop spent waiting for the next batch

Switches for before/after comparisons: `--draw-in-step` leaves MetaPortrait's landmark drawing in
`training_step` (`prepare()` on the main process, as before issue 12) instead of the DataLoader workers;
`--precomputed-identity` gives the data `.identity.npy` files of the refine stage's embedder kind, so it
skips its per-step facenet pass on the source.

Prints a table and writes JSON (default benchmarks/results/gpu.json). Without CUDA it says so and
exits with status 2, unless `--device cpu --tiny` (the smoke mode tests run).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))
EXP = REPO / "experiments"
OFFLINE = ["model.perceptual.pretrained=false"]
PRECISIONS = ("32", "16-mixed", "bf16-mixed")

# stage -> (official experiment, overrides), (tiny experiment, overrides), default batch (None = --batch-size)
CASES = {
    "warp": ((EXP / "metaportrait/warp.yaml", OFFLINE), (EXP / "metaportrait/warp_tiny.yaml", []), None),
    "refine": ((EXP / "metaportrait/refine.yaml", OFFLINE + ["model.identity.pretrained=false"]),
               (EXP / "metaportrait/refine_tiny.yaml", []), None),
    "fomm": ((EXP / "baselines/fomm_vox256.yaml", OFFLINE), (EXP / "baselines/fomm_tiny.yaml", []), None),
    # 512 px 3-frame windows through a 155 M-parameter net: the official per-GPU batch, not --batch-size
    "sr": ((EXP / "metaportrait/sr.yaml", OFFLINE), (EXP / "metaportrait/sr_tiny.yaml", []), "sr"),
}
COMPILED_CHILDREN = ("generator", "discriminator", "kp_detector")
COMPILED_METHODS = ("warp", "refine")  # MetaPortraitGenerator entry points the stages call instead of forward


def _precision_flag(precision: str) -> str:
    return "32-true" if precision == "32" else precision


def _autocast(device: str, precision: str):
    import contextlib

    import torch

    if precision == "16-mixed":
        return torch.autocast(device, dtype=torch.float16)
    if precision == "bf16-mixed":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(batch: dict, device: str, channels_last: bool) -> dict:
    import torch

    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def _first(batch: dict, n: int = 1) -> dict:
    return {k: (v[:n] if hasattr(v, "__getitem__") and not isinstance(v, str) else v) for k, v in batch.items()}


def _compile(stage) -> list[str]:
    import torch

    done = []
    for name in COMPILED_CHILDREN:
        module = getattr(stage, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        module.compile()
        done.append(name)
        for method in COMPILED_METHODS:
            if callable(getattr(module, method, None)):
                setattr(module, method, torch.compile(getattr(module, method)))
                done.append(f"{name}.{method}")
    return done


def _data_root(data_dir: Path, size: int, tiny: bool, precomputed_identity: bool) -> Path:
    root = data_dir / f"s{size}{'_id' if precomputed_identity else ''}"
    if (root / "landmarks.json").is_file():
        return root
    from datamodules import write_synthetic_dataset

    n, frames = (6, 8) if tiny else (8, 32)  # >= 2 training identities left after the validation ones
    write_synthetic_dataset(root, identities=n, videos_per_identity=1, clips_per_video=2, frames=frames, size=size,
                            seed=0, test_fraction=0.25, workers=1)
    if precomputed_identity:
        import numpy as np

        from mp_lightning.networks.identity import EMBEDDING_DIM, embedding_kind

        rng = np.random.default_rng(0)
        for lm in root.rglob("*.landmarks.npy"):
            v = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
            np.save(lm.with_name(lm.name.replace(".landmarks.npy", ".identity.npy")), v / np.linalg.norm(v))
        # the benchmark's refine stage uses a random-weight facenet: declare the files of its kind
        (root / "identity.json").write_text(json.dumps({"kind": embedding_kind(pretrained=False), "dim": EMBEDDING_DIM}))
    return root


def _measure(name: str, opts: argparse.Namespace) -> dict:
    """Runs inside the child process."""
    import warnings

    import lightning as L
    import torch

    from mp_lightning.config.compose import compose
    from mp_lightning.runs.training import build_datamodule, build_stage, connect_stage_and_data

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*(GPU available|TPU available|LOCAL_RANK|tensor cores).*")
    official, tiny, batch_kind = CASES[name]
    experiment, extra = tiny if opts.tiny else official
    device = opts.device
    cuda = device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = opts.tf32
    size = int(compose(experiment, extra).data.image_size)
    batch_size = opts.sr_batch_size if batch_kind == "sr" else opts.batch_size
    root = _data_root(Path(opts.data), size, opts.tiny, opts.precomputed_identity and name == "refine")
    steps = opts.warmup + opts.steps
    cfg = compose(experiment, [
        *extra, f"data.root={root}", f"data.batch_size={batch_size}", f"data.num_workers={opts.workers}",
        f"data.pin_memory={str(cuda).lower()}", f"data.samples_per_epoch={steps * batch_size}",
        f"trainer.accelerator={'gpu' if cuda else 'cpu'}", f"trainer.precision={_precision_flag(opts.precision)}",
        "logger.type=none",
    ])
    dm = build_datamodule(cfg)
    stage = build_stage(cfg, dm)
    if not opts.draw_in_step:
        connect_stage_and_data(stage, dm)
    dm.setup("fit")
    params = sum(p.numel() for p in stage.parameters())
    trainable = sum(p.numel() for p in stage.parameters() if p.requires_grad)
    stage.to(device)
    if opts.channels_last:
        stage.to(memory_format=torch.channels_last)
    compiled = _compile(stage) if opts.compile else []

    def trainer(callback):
        return L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=_precision_flag(opts.precision),
                         max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[callback])

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class Clock(L.Callback):
        def __init__(self):
            self.starts, self.ends = [], []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == opts.warmup and cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync()
            self.ends.append(time.perf_counter())

    # 1. train step on a fixed batch already on the device (one real batch: drawn by the workers' transform)
    first = next(iter(dm.train_dataloader()))
    fixed = _to_device(first, device, opts.channels_last)
    clock = Clock()
    loader = torch.utils.data.DataLoader([fixed] * steps, batch_size=None, shuffle=False)
    trainer(clock).fit(stage, train_dataloaders=loader)
    sync()
    step_times = [e - s for s, e in zip(clock.starts, clock.ends)][opts.warmup:]
    peak_mib = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20

    # 2. inference at batch 1
    stage.eval()
    one = _first(fixed)
    with torch.no_grad(), _autocast(device, opts.precision):
        for _ in range(2):
            out = stage(one)
        sync()
        infer = []
        for _ in range(opts.frames):
            t0 = time.perf_counter()
            out = stage(one)
            sync()
            infer.append(time.perf_counter() - t0)
    pred = out["prediction"]
    frames_per_call = pred.shape[1] if pred.dim() == 5 else pred.shape[0]
    stage.train()

    # 3. end to end: the real DataModule, workers, pinned memory, host-to-device copies
    clock = Clock()
    trainer(clock).fit(stage, datamodule=dm)
    sync()
    start, end = clock.starts[opts.warmup], clock.ends[-1]
    timed = len(clock.ends) - opts.warmup
    waits = [s - e for s, e in zip(clock.starts[opts.warmup + 1:], clock.ends[opts.warmup:])]
    return {
        "stage": name, "experiment": str(Path(experiment).relative_to(REPO)), "image_size": size, "batch": batch_size,
        "parameters": params, "trainable_parameters": trainable, "precision": opts.precision,
        "channels_last": opts.channels_last, "compiled": compiled, "draw_in_step": opts.draw_in_step,
        "precomputed_identity": opts.precomputed_identity and name == "refine",
        "train_step_ms": statistics.median(step_times) * 1e3, "train_step_ms_min": min(step_times) * 1e3,
        "steps_timed": len(step_times), "peak_memory_mib": peak_mib,
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS",
        "inference_ms": statistics.median(infer) * 1e3, "inference_frames_per_call": frames_per_call,
        "e2e_samples_per_s": timed * batch_size / (end - start), "e2e_steps_timed": timed,
        "e2e_data_wait_share": sum(waits) / (end - start), "workers": opts.workers,
    }


def _environment(device: str) -> dict:
    import torch

    env = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
           "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["threads"] = torch.get_num_threads()
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True).stdout.strip()
    except OSError:
        pass
    return env


def _print_table(results: list[dict], device: str) -> None:
    mem = "peak MiB" if device == "cuda" else "peak RSS"
    print(f"{'stage':8s} {'size':>5s} {'batch':>5s} {'params':>13s} {'step ms':>9s} {mem:>9s} {'infer ms':>9s} "
          f"{'samples/s':>10s} {'data wait':>9s}")
    for r in results:
        if "error" in r:
            print(f"{r['stage']:8s} ERROR {r['error']}")
            continue
        print(f"{r['stage']:8s} {r['image_size']:5d} {r['batch']:5d} {r['parameters']:13,d} {r['train_step_ms']:9.1f} "
              f"{r['peak_memory_mib']:9.0f} {r['inference_ms']:9.1f} {r['e2e_samples_per_s']:10.1f} "
              f"{100 * r['e2e_data_wait_share']:8.1f}%")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--precision", default="32", choices=PRECISIONS)
    parser.add_argument("--batch-size", type=int, default=8, help="per-step batch of warp, refine and fomm")
    parser.add_argument("--sr-batch-size", type=int, default=2, help="batch of the SR stage (official per-GPU batch)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (cudnn autotuning, compilation)")
    parser.add_argument("--frames", type=int, default=10, help="timed batch-1 inference calls")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 8; --tiny: 1)")
    parser.add_argument("--channels-last", action="store_true", help="networks and 4-D inputs in channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the generator/discriminator/kp detector")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="fp32 matmul/conv without TF32 (CUDA)")
    parser.add_argument("--draw-in-step", action="store_true",
                        help="MetaPortrait landmark drawing in training_step (the pre-issue-12 path), not in workers")
    parser.add_argument("--precomputed-identity", action="store_true",
                        help="refine: .identity.npy files of the embedder's kind (no facenet pass on the source)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu only with --tiny (smoke mode)")
    parser.add_argument("--tiny", action="store_true", help="the *_tiny experiments (seconds on a CPU) instead of official sizes")
    parser.add_argument("--data", help="where synthetic data is written (default: a temporary folder)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = 1 if args.tiny else 8
    if args.workers < 1:
        parser.error("--workers must be >= 1: the end-to-end figure is about DataLoader workers")
    if args.steps < 1 or args.warmup < 0 or args.frames < 1:
        parser.error("--steps and --frames must be >= 1, --warmup >= 0")
    return args


def _child_argv(args: argparse.Namespace, name: str, data: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--data", data, "--device", args.device,
            "--precision", args.precision, "--batch-size", str(args.batch_size), "--sr-batch-size", str(args.sr_batch_size),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--frames", str(args.frames),
            "--workers", str(args.workers)]
    for flag in ("channels_last", "compile", "draw_in_step", "precomputed_identity", "tiny"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    if not args.tf32:
        argv.append("--no-tf32")
    return argv


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child, args)))
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs CUDA: no GPU is visible here (torch.cuda.is_available() is False). "
              "For a smoke run of the script itself on the CPU: --device cpu --tiny", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("benchmarks/gpu.py: --device cpu is the smoke mode and needs --tiny (official sizes take minutes per "
              "step on a CPU; benchmarks/stages.py measures those)", file=sys.stderr)
        return 2
    if args.device == "cpu" and args.precision == "16-mixed":
        print("benchmarks/gpu.py: 16-mixed needs CUDA; use 32 or bf16-mixed on the CPU", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or tmp
        for name in args.stages:
            print(f"... {name}", file=sys.stderr, flush=True)
            proc = subprocess.run(_child_argv(args, name, data), capture_output=True, text=True, cwd=REPO)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                err = proc.stderr.strip().splitlines()
                oom = any("OutOfMemoryError" in line or "out of memory" in line for line in err)
                results.append({"stage": name, "error": "out of memory" if oom else (err[-1] if err else "failed")})
                continue
            results.append(json.loads(lines[-1]))
    _print_table(results, args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in vars(args).items() if k not in ("child", "data", "out")}
    out.write_text(json.dumps({"environment": _environment(args.device), "options": options, "results": results},
                              indent=2))
    print(f"wrote {out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
