NAME = "train"
HELP = "Train a stage: mp-lightning train EXP.yaml [OVERLAY.yaml ...] [key=value ...]"


def add_arguments(parser):
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument(
        "overrides", nargs="*",
        help="overlay YAML files (e.g. experiments/debug/fast_dev_run.yaml) and key=value overrides",
    )


def run(args) -> int:
    from mp_lightning.config.compose import compose, split_cli_args
    from mp_lightning.runs.training import run_training

    overlays, overrides = split_cli_args(args.overrides)
    cfg = compose(args.experiment, overrides, overlays)
    result = run_training(cfg)
    print(f"run directory: {result['run_dir']}")
    return 0
