"""Does mixed precision learn like fp32? Same start, same batches, N steps per precision; the loss curves.

    python benchmarks/precision_learning.py                                   # tiny warp + refine on CPU
    python benchmarks/precision_learning.py --device cuda --precisions 32 16-mixed bf16-mixed --steps 80

For each stage and precision: one stage built from the same seed, trained for `--steps` steps on the same
fixed batches of the tiny synthetic data (the stage's own `training_step` under Lightning's precision
plugin: `16-mixed` runs a GradScaler, also on CPU). Prints the mean loss of the first and last 5 steps,
their ratio, and the steps skipped for NaN/inf gradients; writes JSON (default
benchmarks/results/precision_learning.json). fp16 autocast on CPU is slow: keep --steps small there.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STAGES = {"warp": "metaportrait/warp_tiny.yaml", "refine": "metaportrait/refine_tiny.yaml",
          "fomm": "baselines/fomm_tiny.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["warp", "refine"], choices=sorted(STAGES))
    parser.add_argument("--precisions", nargs="+", default=["32", "16-mixed"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "precision_learning.json"))
    args = parser.parse_args()

    import lightning as L
    import torch

    from datamodules import write_synthetic_dataset
    from mp_lightning.config.compose import compose
    from mp_lightning.runs.training import build_datamodule, build_stage, connect_stage_and_data

    class LossCurve(L.Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(trainer.callback_metrics["train/loss"]))

    tmp = Path(tempfile.mkdtemp(prefix="mpl_precision_"))
    root = tmp / "data"
    write_synthetic_dataset(root, identities=6, videos_per_identity=1, clips_per_video=2, frames=16, size=64, seed=0)
    results = {"device": args.device, "steps": args.steps, "batch_size": args.batch_size, "stages": {}}
    print(f"{'stage':8} {'precision':11} {'first5':>9} {'last5':>9} {'last/first':>10} {'skipped':>8}")
    for name in args.stages:
        cfg = compose(REPO / "experiments" / STAGES[name],
                      [f"data.root={root}", "data.image_size=64", "data.num_workers=0", "logger.type=none",
                       f"output_root={tmp / 'runs'}"])
        dm = build_datamodule(cfg)
        torch.manual_seed(0)
        start = build_stage(cfg, dm)
        connect_stage_and_data(start, dm)
        dm.setup("fit")
        samples = [dm.train_dataset[i] for i in range(args.steps * args.batch_size)]
        loader = torch.utils.data.DataLoader(samples, batch_size=args.batch_size, shuffle=False)
        results["stages"][name] = {}
        for precision in args.precisions:
            stage, curve = copy.deepcopy(start), LossCurve()
            kwargs = {"precision": precision}
            if args.device == "cpu" and precision == "16-mixed":
                # Lightning turns the 16-mixed flag into bf16 on CPU; the plugin keeps fp16 + GradScaler
                from lightning.pytorch.plugins.precision import MixedPrecision

                kwargs = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
            trainer = L.Trainer(accelerator=args.device, devices=1, max_steps=args.steps, **kwargs,
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                limit_val_batches=0, num_sanity_val_steps=0, callbacks=[curve],
                                default_root_dir=str(tmp / "runs"))
            trainer.fit(stage, train_dataloaders=loader)
            first, last = sum(curve.losses[:5]) / 5, sum(curve.losses[-5:]) / 5
            results["stages"][name][precision] = {"losses": curve.losses, "first5": first, "last5": last,
                                                  "skipped_steps": stage.skipped_steps}
            print(f"{name:8} {precision:11} {first:9.4f} {last:9.4f} {last / first:10.3f} {stage.skipped_steps:8d}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
