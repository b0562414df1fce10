"""`mp-lightning personalization-benchmark`: personalize checkpoints on held-out identities, metric per step."""
from __future__ import annotations

NAME = "personalization-benchmark"
HELP = ("fine-tune each checkpoint on the first seconds of held-out identities and report LPIPS, L1, PSNR and "
        "identity similarity per step count (summary.json, summary.md, curves.png)")


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=CKPT",
                        help="an initialization to benchmark (repeat the flag for several)")
    parser.add_argument("--data", required=True, help="dataset root holding SPLIT/<identity>/<video>/<clip>.mp4")
    parser.add_argument("--split", default="test", help="the held-out split (default test)")
    parser.add_argument("--identities", type=int, default=None, help="the first N identities (default all)")
    parser.add_argument("--support-seconds", type=float, default=1.0,
                        help="fine-tune on the first S seconds of one video (default 1)")
    parser.add_argument("--steps", default="0,1,2,5,10,20,50", help="step counts evaluated (comma-separated)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe.optimizer=adam recipe.lr=1e-4 max_eval_frames=32 lpips_pretrained=false "
                             "identity_pretrained=false reference=NAME device=cpu wandb=disabled ...")


def run(args) -> int:
    from pathlib import Path

    from mp_lightning.errors import ConfigError
    from mp_lightning.runs.personalization_benchmark import benchmark_config, run_benchmark

    checkpoints = {}
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--checkpoint takes NAME=CKPT, got '{item}'")
        if name in checkpoints:
            raise ConfigError(f"--checkpoint name '{name}' is used twice")
        checkpoints[name] = path
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError as err:
        raise ConfigError(f"--steps takes comma-separated integers, got '{args.steps}'") from err
    cfg = benchmark_config(args.overrides)
    run_benchmark(checkpoints, args.data, args.out, split=args.split, identities=args.identities,
                  support_seconds=args.support_seconds, steps=steps, config=cfg)
    summary_md = Path(args.out) / "summary.md"
    if summary_md.is_file():  # rank 0 writes it
        print(summary_md.read_text())
    print(f"wrote {args.out}/summary.json, summary.md, curves.png")
    return 0
