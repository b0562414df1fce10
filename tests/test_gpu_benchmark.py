"""benchmarks/gpu.py: its CPU smoke mode runs every measurement for one step; without CUDA it refuses clearly."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import REPO


def _gpu_benchmark():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_needs_cuda_unless_smoke_mode(capsys):
    bench = _gpu_benchmark()
    assert bench.main(["--stages", "warp"]) == 2
    assert "needs CUDA" in capsys.readouterr().err
    assert bench.main(["--device", "cpu", "--stages", "warp"]) == 2  # official sizes on a CPU: refused
    assert "--tiny" in capsys.readouterr().err


def test_smoke_mode_measures_a_stage(tmp_path):
    bench = _gpu_benchmark()
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--tiny", "--stages", "warp", "--steps", "1", "--warmup", "0", "--frames", "1",
            "--batch-size", "2", "--workers", "1", "--data", str(tmp_path / "data"), "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["stage"] == "warp" and row["batch"] == 2 and row["workers"] == 1
    for key in ("train_step_ms", "peak_memory_mib", "inference_ms", "e2e_samples_per_s"):
        assert row[key] > 0, key
    assert report["options"]["precision"] == "32" and report["environment"]["device"] == "cpu"
