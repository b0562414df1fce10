"""VoxCeleb-style talking-head data: the synthetic dataset writer and the video DataModule.

    from datamodules import DataConfig, VoxCelebDataModule, task_pairs, write_synthetic_dataset

Names are imported lazily so that `datamodules.synthetic` (used by the synth worker processes)
does not pull in torch and Lightning.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MODES": "datamodules.config",
    "DataConfig": "datamodules.config",
    "landmark_spec": "datamodules.synthetic",
    "write_synthetic_dataset": "datamodules.synthetic",
    "ClipSampleDataset": "datamodules.voxceleb",
    "VoxCelebDataModule": "datamodules.voxceleb",
    "min_frames_for": "datamodules.voxceleb",
    "task_pairs": "mp_lightning.batch",  # the batch contract lives with the stages' side of it
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")


def __dir__():
    return __all__
