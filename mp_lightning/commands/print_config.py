NAME = "print-config"
HELP = "Print the composed, validated config: mp-lightning print-config EXP.yaml [OVERLAY.yaml ...] [key=value ...]"


def add_arguments(parser):
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument("overrides", nargs="*", help="overlay YAML files and key=value overrides")
    parser.add_argument("--unresolved", action="store_true", help="keep ${...} interpolations")


def run(args) -> int:
    from omegaconf import OmegaConf

    from mp_lightning.config.compose import compose, split_cli_args

    overlays, overrides = split_cli_args(args.overrides)
    cfg = compose(args.experiment, overrides, overlays)
    print(OmegaConf.to_yaml(cfg, resolve=not args.unresolved), end="")
    return 0
