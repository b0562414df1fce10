"""Does the quickstart's model keep faces? Train a candidate setting for a CPU time budget, then measure
on the test split's self-reenactment pairs (source = frame 0 of a clip, ground truth = later frames):
ST-LPIPS of the prediction and of copying the source frame, over the whole frame and inside the face
(landmark hull), and dlib identity similarity self vs cross-identity (beside dlib's same-person and
different-people levels on the test split, `identity_check` in the JSON). Prints a table, writes JSON and
each candidate's grid PNG (source | driving | prediction) to look at.

    python benchmarks/quickstart_quality.py --out runs/bench_quickstart \
        --candidate warp64:experiments/metaportrait/warp_tiny.yaml \
        --candidate warp128:experiments/metaportrait/warp_tiny.yaml:data.image_size=128,model.net.image_size=128
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/quickstart", help="synthetic data (written like the quickstart's if absent)")
    parser.add_argument("--out", default="runs/bench_quickstart")
    parser.add_argument("--candidate", action="append", required=True,
                        help="NAME:EXPERIMENT.yaml[:key=value,key=value] (repeatable)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per candidate")
    parser.add_argument("--steps", type=int, default=100000)
    args = parser.parse_args()

    from mp_lightning.commands.quickstart import ensure_quickstart_data
    from mp_lightning.config.compose import compose
    from mp_lightning.runs.reenactment_report import reenact_test_portraits
    from mp_lightning.stages.base import load_stage
    from mp_lightning.runs.training import run_training

    data = ensure_quickstart_data(Path(args.data))
    out = Path(args.out)
    results = {}
    for spec in args.candidate:
        name, experiment, *rest = spec.split(":")
        overrides = [o for o in (rest[0].split(",") if rest else []) if o]
        minutes, seconds = int(args.minutes), int(round((args.minutes - int(args.minutes)) * 60))
        cfg = compose(experiment, [f"name={name}", f"output_root={out}", f"data.root={data}",
                                   f"trainer.max_steps={args.steps}", f"trainer.max_time='00:00:{minutes:02d}:{seconds:02d}'",
                                   "trainer.accelerator=cpu", "trainer.devices=1", "logger.type=none",
                                   "callbacks.media.enabled=false", "trainer.check_val_every_n_epoch=1000", *overrides])
        t0 = time.time()
        trained = run_training(cfg)
        train_s = time.time() - t0
        import torch

        steps = int(torch.load(trained["last_checkpoint"], map_location="cpu", weights_only=False)["global_step"])
        stage = load_stage(trained["last_checkpoint"], map_location="cpu")
        report = reenact_test_portraits(stage, data, out / name)
        results[name] = {"experiment": experiment, "overrides": overrides, "train_seconds": round(train_s, 1),
                         "steps": steps, "test_pairs": report["test_pairs"],
                         "reenactment": report["metrics"], "identity_check": report.get("identity_check"),
                         "grid": report["grid"]}
        print(json.dumps({name: results[name]}, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "quickstart_quality.json").write_text(json.dumps(results, indent=2))
    head = f"{'candidate':12s} {'steps':>6s} {'train s':>8s} {'ST-LPIPS':>9s} {'copy':>7s} {'face':>7s} {'face copy':>9s} " \
           f"{'id self':>8s} {'id cross':>8s} {'no face':>7s}"
    print(head)
    for name, r in results.items():
        t, m = r["test_pairs"], r["reenactment"]
        print(f"{name:12s} {r['steps']:6d} {r['train_seconds']:8.0f} {t['st_lpips']:9.4f} {t['st_lpips_copy_source']:7.4f} "
              f"{t['st_lpips_face']:7.4f} {t['st_lpips_face_copy_source']:9.4f} "
              f"{m['self'].get('id_similarity_dlib', float('nan')):8.4f} {m['cross'].get('id_similarity_dlib', float('nan')):8.4f} "
              f"{m['self'].get('dlib_no_face', 0) + m['cross'].get('dlib_no_face', 0):7.0f}")
    print(f"wrote {out / 'quickstart_quality.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
