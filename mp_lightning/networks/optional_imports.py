"""Importing optional packages (the `metrics` extra) whose modules import things they do not declare."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from contextlib import contextmanager
from typing import Dict, Iterator


def _refuse(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"{name} is a stand-in installed only so that a package imports; it does nothing")

    return call


@contextmanager
def stand_in_modules(attributes: Dict[str, tuple]) -> Iterator[None]:
    """Put empty modules with the named attributes into `sys.modules` while the block runs, for each module
    that is not installed; the real module is used where it is. Removed again afterwards, so nothing else
    in the process sees them (the importing package keeps its own references)."""
    added = []
    for module, names in attributes.items():
        if module in sys.modules or importlib.util.find_spec(module) is not None:
            continue
        stub = types.ModuleType(module)
        for name in names:
            setattr(stub, name, _refuse(f"{module}.{name}"))
        sys.modules[module] = stub
        added.append(module)
    try:
        yield
    finally:
        for module in added:
            sys.modules.pop(module, None)


INSTALL_HINT = 'install the metrics extra: pip install -e ".[metrics]"'
