"""Every experiment file in the repository composes; every tiny one passes a fast-dev-run.

Parametrized over the files found on disk, so a new experiment file is tested automatically.
Official-size files are compose-only (their networks are too big for CPU tests); `*tiny*` files
also train one batch of train/val/test on the tiny synthetic data (the one fast-dev-run of each: the stage
test files test what else their stage does).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXPERIMENTS, tiny_overrides

NOT_EXPERIMENTS = ("base", "debug", "sweeps", "cluster")  # overlays, sweep files, launch scripts


def _is_experiment(path: Path) -> bool:
    from omegaconf import OmegaConf

    from mp_lightning.runs.ablation import is_ablation_set
    from mp_lightning.config.compose import load_yaml_with_defaults

    if is_ablation_set(path):
        return False
    raw = load_yaml_with_defaults(path)
    return raw.get("stage") is not None and not OmegaConf.is_missing(raw, "stage")


def experiment_files() -> list[Path]:
    files = []
    for path in sorted(EXPERIMENTS.rglob("*.y*ml")):
        rel = path.relative_to(EXPERIMENTS)
        if rel.parts[0] in NOT_EXPERIMENTS:
            continue
        if _is_experiment(path):
            files.append(path)
    return files


FILES = experiment_files()
TINY = [p for p in FILES if "tiny" in p.stem]
IDS = [str(p.relative_to(EXPERIMENTS)) for p in FILES]
TINY_IDS = [str(p.relative_to(EXPERIMENTS)) for p in TINY]


def test_experiment_files_are_found():
    assert len(FILES) >= 10
    assert any("paper" in i for i in IDS) and any("metaportrait" in i for i in IDS)
    assert TINY, "no tiny experiment to fast-dev-run"
    # overlays and sets are not experiments
    assert not any(i.startswith(("base/", "debug/", "sweeps/")) for i in IDS)
    assert "paper/ablation_base_tiny.yaml" not in IDS


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_experiment_composes(path):
    from mp_lightning.config.compose import compose

    cfg = compose(path)
    assert cfg.name and cfg.stage
    assert cfg.run_dir.endswith(cfg.name)


@pytest.mark.slow
@pytest.mark.parametrize("path", TINY, ids=TINY_IDS)
def test_tiny_experiment_fast_dev_run(path, tiny_data, tmp_path):
    from mp_lightning.config.compose import compose
    from mp_lightning.runs.training import run_training

    cfg = compose(path, tiny_overrides(tiny_data, tmp_path), [EXPERIMENTS / "debug" / "fast_dev_run.yaml"])
    result = run_training(cfg)
    assert result["global_step"] >= 1
    run_dir = Path(result["run_dir"])
    assert run_dir == tmp_path / cfg.name and (run_dir / "config.yaml").is_file()
    assert json.loads((run_dir / "data_report.json").read_text())
