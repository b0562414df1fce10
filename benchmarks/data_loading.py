"""Samples/s of `VoxCelebDataModule` in `pairs` mode against two ways of reading the same frames.

    python benchmarks/data_loading.py [--samples 400] [--size 256] [--frames 64] [--out PATH]

Rows:
  datamodule (workers=0)  the full training path in this process: decord random access to 2
                          frames, landmarks, float tensors, flip augmentation, collate
  datamodule (workers=N)  the same with N DataLoader worker processes
  (a) raw decord          decord `get_batch` of exactly the frame indices the DataModule drew,
                          one cached VideoReader per clip, nothing else
  (b) FOMM way            decode the whole clip (PyAV, sequential), convert it to float32 as
                          FOMM's `read_video` does, keep the 2 frames

Floors (issue 2): datamodule(workers=0) >= 0.8x of (a) and >= 5x of (b).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _make_data(root: Path, size: int, frames: int, identities: int, gop: int) -> None:
    from datamodules import write_synthetic_dataset

    if (root / "landmarks.json").is_file():
        return
    write_synthetic_dataset(
        root, identities=identities, videos_per_identity=1, clips_per_video=2, frames=frames, size=size, seed=0, gop=gop
    )


def bench_datamodule(root: Path, size: int, samples: int, workers: int, batch_size: int, seed: int = 0, threads: int = 0):
    import torch

    from datamodules import DataConfig, VoxCelebDataModule

    cfg = DataConfig(
        root=str(root), image_size=size, mode="pairs", batch_size=batch_size, num_workers=workers,
        samples_per_epoch=samples, augment_flip=True, persistent_workers=False, decode_threads=threads,
    )
    dm = VoxCelebDataModule(cfg)
    dm.setup("fit")
    torch.manual_seed(seed)
    drawn = []
    loader = dm.train_dataloader()
    it = iter(loader)
    first = next(it)  # worker start-up and first reader opens are not part of the steady state
    start = time.perf_counter()
    count = 0
    for batch in it:
        count += len(batch["clip"])
        for c, s, d in zip(batch["clip"], batch["source_index"].tolist(), batch["driving_index"].tolist()):
            drawn.append((c, s, d))
    elapsed = time.perf_counter() - start
    del first
    paths = {c.name: c.path for c in dm.train_dataset.clips}
    return count / elapsed, [(paths[c], s, d) for c, s, d in drawn]


def bench_raw_decord(drawn, threads: int = 0) -> float:
    from datamodules.clips import import_decord

    decord = import_decord()

    readers = {}
    start = time.perf_counter()
    for path, s, d in drawn:
        vr = readers.get(path)
        if vr is None:
            vr = readers[path] = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        frames = vr.get_batch(sorted({s, d})).asnumpy()
        assert frames.shape[0] >= 1
    return len(drawn) / (time.perf_counter() - start)


def bench_fomm(drawn) -> float:
    import av

    start = time.perf_counter()
    for path, s, d in drawn:
        with av.open(path) as container:
            video = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        video = video.astype(np.float32) / 255.0  # FOMM's read_video: img_as_float32 of the whole clip
        pair = video[[s, d]].copy()
        assert pair.shape[0] == 2
    return len(drawn) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="synthetic data folder (made if missing; default: a temp dir)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--identities", type=int, default=10, help="identities to synthesise (2 clips each)")
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval of the synthetic clips (default: synth's)")
    parser.add_argument("--samples", type=int, default=400, help="samples per measured row")
    parser.add_argument("--fomm-samples", type=int, default=60, help="samples for the slow FOMM row")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (median reported)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the multi-process DataModule row")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--decode-threads", type=int, default=None, help="decord threads, both readers (default: DataConfig's)")
    parser.add_argument(
        "--torch-threads", type=int, default=1,
        help="torch intra-op threads of this process (collate's stack); 0 = torch's default. On a busy"
        " 2-core machine the default makes small tensor ops 30-70x slower",
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "data_loading.json"))
    args = parser.parse_args(argv)

    from datamodules.synthetic import DEFAULT_GOP

    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    from datamodules import DataConfig

    threads = DataConfig.decode_threads if args.decode_threads is None else args.decode_threads
    gop = args.gop or DEFAULT_GOP
    tmp = None
    if args.root is None:
        tmp = tempfile.TemporaryDirectory(prefix="mp_lightning_bench_")
        root = Path(tmp.name)
    else:
        root = Path(args.root)
    t0 = time.perf_counter()
    _make_data(root, args.size, args.frames, args.identities, gop)
    synth_s = time.perf_counter() - t0

    # The machine is shared: rows are measured in interleaved rounds on the same frame indices and
    # each row reports its median round, so a burst of load elsewhere hits all rows alike.
    per_round = max(args.batch_size * 4, args.samples // args.rounds)
    dm0s, raws, fomms = [], [], []
    for r in range(args.rounds):
        rate, drawn = bench_datamodule(root, args.size, per_round, 0, args.batch_size, seed=r, threads=threads)
        dm0s.append(rate)
        raws.append(bench_raw_decord(drawn, threads))
        fomms.append(bench_fomm(drawn[: max(4, args.fomm_samples // args.rounds)]))
    dm0, raw, fomm = (float(np.median(v)) for v in (dm0s, raws, fomms))
    dmw, _ = bench_datamodule(root, args.size, args.samples, args.workers, args.batch_size, threads=threads)

    rows = [
        ("datamodule pairs (workers=0)", dm0),
        (f"datamodule pairs (workers={args.workers})", dmw),
        ("(a) raw decord, same indices", raw),
        ("(b) FOMM: decode whole clip, keep 2", fomm),
    ]
    print(
        f"\n{args.frames}-frame {args.size}px H.264 clips (GOP {gop}, no B-frames), batch {args.batch_size},"
        f" decord threads {threads or 'auto'}, torch threads {torch.get_num_threads()}, median of {args.rounds} interleaved rounds"
    )
    print(f"{'reader':<40} {'samples/s':>10} {'vs (a)':>8} {'vs (b)':>8}")
    for name, value in rows:
        print(f"{name:<40} {value:>10.1f} {value / raw:>7.2f}x {value / fomm:>7.1f}x")
    floors = {"dm_vs_raw_decord >= 0.8": dm0 / raw >= 0.8, "dm_vs_fomm >= 5": dm0 / fomm >= 5}
    print("floors:", ", ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in floors.items()))

    result = {
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"gop": gop, "decode_threads": threads},
        "samples_per_s": {name: value for name, value in rows},
        "rounds": {"datamodule_workers0": dm0s, "raw_decord": raws, "fomm": fomms},
        "ratios": {"datamodule_vs_raw_decord": dm0 / raw, "datamodule_vs_fomm": dm0 / fomm},
        "floors_met": floors,
        "synth_seconds": synth_s,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
