NAME = "import-checkpoint"
HELP = "Convert an official checkpoint (metaportrait, metaportrait-sr, fomm, pirender) into an mp-lightning checkpoint"


def add_arguments(parser):
    parser.add_argument("family", help="which official release the file comes from: metaportrait | metaportrait-sr | fomm | pirender")
    parser.add_argument("path", help="the official checkpoint file")
    parser.add_argument("--out", required=True, help="where to write the mp-lightning checkpoint (.ckpt)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="converter option, e.g. --option align_corners=true (fomm) --option use_ema=false (sr) or --option weights=net_G (pirender)",
    )


def _parse_options(items):
    import yaml

    options = {}
    for item in items:
        if "=" not in item:
            from mp_lightning.errors import UserFacingError

            raise UserFacingError(f"--option '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        options[key] = yaml.safe_load(value)
    return options


def run(args) -> int:
    from pathlib import Path

    from mp_lightning.checkpoints import converters
    from mp_lightning.errors import UserFacingError
    from mp_lightning.stages.base import save_stage_checkpoint

    available = converters()
    if args.family not in available:
        raise UserFacingError(f"unknown checkpoint family '{args.family}' (known: {', '.join(sorted(available))})")
    if not Path(args.path).is_file():
        raise UserFacingError(f"checkpoint not found: {args.path}")
    stage, info = available[args.family](args.path, **_parse_options(args.option))
    out = save_stage_checkpoint(stage, args.out, source=str(args.path))
    for key, value in (info or {}).items():
        print(f"{key}: {value}")
    print(f"wrote {out} (load with mp_lightning.load_stage, or start training from it with model.init_from={out})")
    return 0
