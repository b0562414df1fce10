"""Converters from official checkpoints to our Lightning checkpoints (`mp-lightning import-checkpoint`).

A converter module registers itself with `@register_converter("fomm")`; the function takes the path of
the official file and keyword options and returns `(stage_module, info)` where `stage_module` is one of
our LightningModules with the imported weights and `info` is a dict printed to the user.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict

_CONVERTERS: Dict[str, Callable] = {}


def register_converter(family: str):
    def wrap(fn):
        _CONVERTERS[family] = fn
        return fn

    return wrap


def converters() -> Dict[str, Callable]:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return dict(_CONVERTERS)
