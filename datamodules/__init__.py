"""VoxCeleb-style talking-head data: the synthetic dataset writer and the video DataModule.

    from datamodules import DataConfig, VoxCelebDataModule, task_pairs, write_synthetic_dataset
"""
from datamodules.config import MODES, DataConfig
from datamodules.synthetic import landmark_spec, write_synthetic_dataset
from datamodules.voxceleb import ClipSampleDataset, VoxCelebDataModule, min_frames_for, task_pairs

__all__ = [
    "MODES",
    "ClipSampleDataset",
    "DataConfig",
    "VoxCelebDataModule",
    "landmark_spec",
    "min_frames_for",
    "task_pairs",
    "write_synthetic_dataset",
]
