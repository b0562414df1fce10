NAME = "compare"
HELP = "Evaluate several methods on the same test pairs and metrics: mp-lightning compare EXP_A.yaml CKPT_A EXP_B.yaml CKPT_B ..."


def add_arguments(parser):
    parser.add_argument("items", nargs="+",
                        help="EXP.yaml CKPT pairs, or one compare .yaml with `methods: [{name, experiment, checkpoint}]`; "
                             "then key=value overrides applied to every method (e.g. data.root=...)")
    parser.add_argument("--out", default="runs/compare", help="output folder: compare.md, compare.csv, compare.mp4")
    parser.add_argument("--video-frames", type=int, default=32, help="frames of the side-by-side video (0: none)")
    parser.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"])
    parser.add_argument("--source-identity", default=None,
                        help="precomputed identity (.npy) of the video's source clip, for checkpoints that condition on one; "
                             "default: CLIP.identity.npy beside it when present")


def run(args) -> int:
    from mp_lightning.runs.compare import methods_from_args, run_compare

    positional = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    result = run_compare(methods_from_args(positional), args.out, overrides, args.video_frames, args.wandb,
                         source_identity=args.source_identity)
    print(open(f"{result['dir']}/compare.md").read(), end="")
    print(f"wrote {result['dir']}/compare.md, compare.csv" + (f", {result['video']}" if result["video"] else ""))
    return 0
