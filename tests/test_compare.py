"""Side-by-side evaluation: one row per method, every metric, the same pairs for every method."""
from __future__ import annotations

import csv

import pytest

from mp_lightning.cli import main
from mp_lightning.io.video import read_video
from tests.conftest import EXPERIMENTS, tiny_overrides


@pytest.mark.slow
def test_compare_writes_one_row_per_method_with_every_metric(built_stage, tiny_data, tmp_path):
    warp = EXPERIMENTS / "metaportrait" / "warp_tiny.yaml"
    fomm = EXPERIMENTS / "baselines" / "fomm_tiny.yaml"
    ckpt_w = built_stage(warp, run_root=tmp_path).save(tmp_path / "warp.ckpt")
    ckpt_f = built_stage(fomm, run_root=tmp_path).save(tmp_path / "fomm.ckpt")
    out = tmp_path / "cmp"
    overrides = tiny_overrides(tiny_data, tmp_path)
    assert main(["compare", str(warp), str(ckpt_w), str(fomm), str(ckpt_f), *overrides, "--out", str(out),
                 "--video-frames", "4", "--wandb", "offline"]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["method"] for r in rows] == ["warp_tiny", "fomm_tiny"]
    for metric in ("test/lpips_random", "test/psnr", "test/ssim", "test/l1", "test/id_similarity_random",
                   "test/cross/id_similarity_random"):
        assert all(r[metric] != "" for r in rows), metric
    protocols = [r["cross-identity protocol"] for r in rows]
    assert "retargeted" in protocols[0] and "relative keypoints" in protocols[1]  # each method's own protocol
    frames = read_video(out / "compare.mp4")
    assert frames.shape[0] == 4 and frames.shape[2] == 4 * 64  # source | driving | 2 methods
    assert main(["report", str(out)]) == 0  # the table and the side-by-side video on one page
    page = (out / "report.html").read_text()
    assert "<td>warp_tiny</td>" in page and "<td>fomm_tiny</td>" in page and "data:video/mp4;base64," in page


def test_compare_refuses_methods_evaluated_on_different_data(tiny_data, tmp_path, capsys):
    other = tmp_path / "warp_other_pairs.yaml"
    other.write_text(f"defaults:\n  - {EXPERIMENTS / 'metaportrait' / 'warp_tiny.yaml'}\ndata:\n  eval_seed: 3\n")
    warp = EXPERIMENTS / "metaportrait" / "warp_tiny.yaml"
    args = ["compare", str(warp), str(tmp_path / "a.ckpt"), str(other), str(tmp_path / "b.ckpt"),
            *tiny_overrides(tiny_data, tmp_path), "--out", str(tmp_path / "cmp")]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "data.eval_seed (warp_tiny: 0, warp_other_pairs: 3)" in err and "data.root (" not in err
