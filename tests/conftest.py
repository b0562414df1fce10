"""Shared fixtures: a tiny synthetic dataset made once per session, and the repository's paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
REFERENCE = REPO.parent / "shared" / "reference"

# MetaPortrait golden atol = 2 x max |ours - golden| over 9 CPU kernel settings (ATen/oneDNN/MKL ISA, 1-2 threads),
# rounded up; convention bugs move outputs by >= 0.1. Reproduce: python benchmarks/golden_spread.py --quirks
METAPORTRAIT_GOLDEN_ATOL = {"prediction": 6e-4, "deformed": 3e-4, "occlusion_map": 5e-5, "deformation": 9e-6,
                            "flow": 9e-6, "ladder_code": 1e-6}

# keep every W&B and torch-hub file of the test run out of the home directory
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """6 train + 2 test identities, 2 clips each, 16 frames at 64 px (written once per test session)."""
    from datamodules import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, identities=8, videos_per_identity=1, clips_per_video=2, frames=16, size=64,
                            seed=0, test_fraction=0.25)
    return root


def tiny_overrides(data_root: Path, run_root: Path, *extra: str) -> list[str]:
    """Shrink any experiment to a seconds-long CPU run on the tiny dataset."""
    return [
        f"data.root={data_root}",
        "data.image_size=64",
        "data.batch_size=2",
        "data.num_workers=0",
        f"output_root={run_root}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "logger.type=none",
        *extra,
    ]


class BuiltStage:
    """A tiny experiment composed and built as training builds it: `cfg`, `datamodule` (set up for fit),
    `stage`; `batch(split)` is the first batch of the train or the first validation loader; `save(path)` writes
    the stage (untrained) as a checkpoint that `load_stage` and the commands read."""

    def __init__(self, cfg, datamodule, stage):
        self.cfg, self.datamodule, self.stage = cfg, datamodule, stage

    def batch(self, split: str = "train") -> dict:
        loader = self.datamodule.train_dataloader() if split == "train" else self.datamodule.val_dataloader()[0]
        return next(iter(loader))

    def save(self, path: Path) -> Path:
        from mp_lightning.stages.base import save_stage_checkpoint

        return save_stage_checkpoint(self.stage, path)


@pytest.fixture(scope="session")
def built_stage(tiny_data):
    """Factory: `built_stage("metaportrait/warp_tiny.yaml", "key=value", ...)` -> BuiltStage (the experiment
    relative to experiments/, or a full path).

    The experiment is shrunk with `tiny_overrides` on `data_root` (default: the session's tiny data), runs
    under `run_root` (default DATA_ROOT/runs). `seed`: torch.manual_seed before anything is built, so the
    stage's initial weights are the seed's (a batch taken afterwards draws from the generator too).
    """
    import torch

    from mp_lightning.config.compose import compose
    from mp_lightning.runs.training import build_datamodule, build_stage

    def build(experiment: str | Path, *overrides: str, data_root: Path | None = None,
              run_root: Path | None = None, seed: int | None = None) -> BuiltStage:
        if seed is not None:
            torch.manual_seed(seed)
        root = data_root or tiny_data
        cfg = compose(EXPERIMENTS / experiment, tiny_overrides(root, run_root or root / "runs", *overrides))
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        return BuiltStage(cfg, datamodule, build_stage(cfg, datamodule))

    return build
