"""`mp-lightning` command line.

Every subcommand lives in its own module under `mp_lightning/commands/` and exposes

    NAME: str                       # the subcommand, e.g. "train"
    HELP: str                       # one line for `mp-lightning --help`
    def add_arguments(parser): ...  # argparse arguments
    def run(args) -> int | None: ...

so that a new command is one new file and nothing else changes. A command whose options are the fields of a
settings dataclass makes its flags from it (`commands/flags.py`), so each setting is written once.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mp_lightning import commands as _commands_pkg


def _discover_commands():
    found = {}
    for info in pkgutil.iter_modules(_commands_pkg.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_commands_pkg.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            found[module.NAME] = module
    return dict(sorted(found.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mp-lightning",
        description="MetaPortrait / FOMM / PIRender talking-head experiments on PyTorch Lightning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _discover_commands().items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from mp_lightning.errors import UserFacingError

    try:
        code = args._run(args)
    except UserFacingError as err:
        print(f"mp-lightning {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
