"""`mp-lightning sweep [--local] [--max-runs N] [--dir DIR] SWEEP.yaml [key=value ...]` (options first)."""
NAME = "sweep"
HELP = ("Run a W&B sweep file (experiments/sweeps/*.yaml): with a W&B account (creates the sweep, starts an agent), "
        "or --local without a server (grid/random/bayes, offline runs, resumable); options before the file")


def add_arguments(parser):
    parser.add_argument("sweep", help="W&B sweep YAML (its command names the experiment file)")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides added to every trial (e.g. data.root=data/mine trainer.devices=2)")
    parser.add_argument("--local", action="store_true",
                        help="no W&B server: suggest trials with the `sweeps` package, offline W&B runs, resumable")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="total trials (local: including those of an interrupted earlier invocation; "
                             "default: the whole grid, or 10); online: trials for this agent")
    parser.add_argument("--dir", default=None, help="sweep directory (default runs/sweeps/<sweep name>)")
    parser.add_argument("--sweep-id", default=None, help="online: join this existing sweep instead of creating one")
    parser.add_argument("--create-only", action="store_true", help="online: create the sweep, print its id, start no agent")
    parser.add_argument("--project", default=None, help="online: W&B project (default: the file's, or mp-lightning)")
    parser.add_argument("--entity", default=None, help="online: W&B entity (default: the file's, or your default)")


def run(args) -> int:
    from mp_lightning.runs.sweep import run_local_sweep, run_online_sweep

    if args.local:
        state = run_local_sweep(args.sweep, args.overrides, max_runs=args.max_runs, sweep_dir=args.dir)
        failed = sum(t["state"] != "finished" for t in state["trials"])
        print(f"{len(state['trials'])} trials ({failed} failed); summary: {state['summary_md']}, {state['summary_csv']}")
        return 0
    run_online_sweep(args.sweep, args.overrides, count=args.max_runs, sweep_id=args.sweep_id,
                     project=args.project, entity=args.entity, sweep_dir=args.dir,
                     create_only=args.create_only)
    return 0
