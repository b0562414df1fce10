"""Where the repository's own folders are (experiments are YAML files beside the packages)."""
from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]  # mp_lightning/io/paths.py -> the checkout


def experiments_dir() -> Path:
    """`$MP_LIGHTNING_EXPERIMENTS`, else the `experiments/` folder of the checkout."""
    return Path(os.environ.get("MP_LIGHTNING_EXPERIMENTS", repo_root() / "experiments"))
