"""Command-line flags made from a settings dataclass, so that a setting is written once.

A field's name, type and default live in the dataclass; `add_dataclass_flags` makes `--field-name` from them
and `settings_from_args` builds the dataclass back from the parsed arguments. What a flag needs beyond the
type is the field's metadata:

    size: int = field(default=256, metadata={"help": "crop size in pixels, even"})

    help     the flag's help; "(default X)" is added
    flag     the flag's name when it is not --field-name (a name users already type)
    choices  the valid values of a str field (an Enum or Literal type lists its own)
    const    the value of the flag given alone (`--smooth-landmarks` = savgol)
    cli      False: no flag (the field keeps its default)

Types: int, float, str, Path, an Enum (a `Choice`) or Literal (the values, checked by argparse, which lists
the valid ones in its error), Optional[X] (default None), tuple/list of one type (`--betas 0.5 0.999`), bool.
A bool that defaults to False is a switch (`--personal-details`); one that defaults to True takes a value,
`--lpips-pretrained false`, since a switch that turns on what is already on does nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from enum import Enum
from pathlib import Path

_BOOL_WORDS = {"true": True, "false": False}


def _parse_bool(text: str) -> bool:
    try:
        return _BOOL_WORDS[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"'{text}' is not true or false") from None


def _unwrap_optional(tp):
    """X for Optional[X], else tp."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flagged_fields(settings_cls) -> list[tuple[dataclasses.Field, object]]:
    """(field, resolved type) of every field that has a flag."""
    hints = typing.get_type_hints(settings_cls)
    return [(f, _unwrap_optional(hints[f.name])) for f in dataclasses.fields(settings_cls)
            if f.init and f.metadata.get("cli", True)]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"setting '{f.name}' has no default; a flag needs one")


def _shown(value) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(v) for v in value)
    return str(value)


def add_dataclass_flags(parser: argparse.ArgumentParser, settings_cls) -> None:
    """One flag per field of the dataclass `settings_cls` (see the module docstring)."""
    for f, tp in _flagged_fields(settings_cls):
        default = _default(f)
        meta = f.metadata
        kwargs: dict = {"dest": f.name, "default": default}
        choices = meta.get("choices")
        origin = typing.get_origin(tp)
        if tp is bool:
            if default:
                kwargs.update(type=_parse_bool, metavar="{true,false}")
            else:
                kwargs["action"] = "store_true"
        elif isinstance(tp, type) and issubclass(tp, Enum):
            choices = [m.value for m in tp]
            kwargs["type"] = str
        elif origin is typing.Literal:
            choices = list(typing.get_args(tp))
            kwargs["type"] = type(choices[0])
        elif origin in (list, tuple):
            items = typing.get_args(tp)
            if origin is tuple and len(items) >= 1 and items[-1] is not Ellipsis:
                kwargs["nargs"] = len(items)
            else:
                kwargs["nargs"] = "+"
            kwargs["type"] = items[0]
        elif tp in (int, float, str, Path):
            kwargs["type"] = tp
        else:
            raise TypeError(f"setting '{settings_cls.__name__}.{f.name}': no flag for type {tp!r} "
                            f"(give it metadata cli=False)")
        if choices is not None:
            kwargs["choices"] = list(choices)
            if isinstance(default, Enum):
                kwargs["default"] = default.value
        if "const" in meta:
            kwargs.update(nargs="?", const=meta["const"])
        help_text = meta.get("help", "")
        if kwargs.get("action") != "store_true" and default is not None:
            help_text = f"{help_text} (default {_shown(default)})".strip()
        kwargs["help"] = help_text or None
        parser.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), **kwargs)


def settings_from_args(settings_cls, args: argparse.Namespace):
    """The dataclass `settings_cls` with the values of its flags in `args` (made by `add_dataclass_flags`)."""
    values = {}
    for f, tp in _flagged_fields(settings_cls):
        value = getattr(args, f.name)
        if value is not None:
            if isinstance(tp, type) and issubclass(tp, Enum):
                value = tp(value)
            elif typing.get_origin(tp) is tuple:
                value = tuple(value)
        values[f.name] = value
    return settings_cls(**values)
