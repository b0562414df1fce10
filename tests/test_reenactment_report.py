"""The quickstart's report: self- and cross-identity reenactment of a test portrait, written as videos and a
grid, with offline metrics whose identity measure tells two people apart."""
from __future__ import annotations

import pytest

from tests.conftest import EXPERIMENTS, tiny_overrides


def test_report_writes_both_reenactments_and_its_identity_measure_separates_people(tiny_data, tmp_path):
    import cv2

    from mp_lightning.config.compose import compose
    from mp_lightning.io.video import read_video
    from mp_lightning.networks.dlib_face import dlib_unavailable_reason
    from mp_lightning.networks.st_lpips import st_lpips_unavailable_reason
    from mp_lightning.runs.reenactment_report import reenact_test_portraits
    from mp_lightning.runs.training import build_datamodule, build_stage

    cfg = compose(EXPERIMENTS / "metaportrait/warp_tiny.yaml", tiny_overrides(tiny_data, tmp_path))
    stage = build_stage(cfg, build_datamodule(cfg))
    report = reenact_test_portraits(stage, tiny_data, tmp_path / "report", max_frames=6)

    assert report["self"]["driving"] != report["cross"]["driving"]
    for name in ("self", "cross"):
        frames = read_video(report[name]["video"])
        assert frames.shape == (6, 64, 3 * 64, 3), frames.shape  # source | driving | prediction
    grid = cv2.imread(report["grid"])
    assert grid is not None and grid.shape[0] < grid.shape[1]  # two rows of four source | driving | prediction

    if st_lpips_unavailable_reason() is None:
        assert {"st_lpips", "st_lpips_copy_source", "st_lpips_face", "st_lpips_face_copy_source"} <= set(
            report["metrics"]["self"])
        assert "st_lpips" not in report["metrics"]["cross"]  # another person's frame is no ground truth
        # every test clip's self-reenactment pairs, scored against copying the source frame
        pairs = report["test_pairs"]
        assert pairs["pairs"] > 0 and pairs["st_lpips_copy_source"] > 0 and pairs["st_lpips"] > 0
    reason = dlib_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    same, other = report["metrics"]["self"], report["metrics"]["cross"]
    print(f"dlib distance driving person vs source: same {same['aed_dlib_driving']:.3f}, "
          f"other {other['aed_dlib_driving']:.3f}")
    # driving frames against the source frame: data, not model output, so the figures are fixed by the
    # deterministic synthetic set (measured 0.226 same person, 0.385 another at 64 px; 0.09-0.12 vs 0.36-0.44
    # at the quickstart's 128 px). The bound asks for half the measured gap.
    assert other["aed_dlib_driving"] > same["aed_dlib_driving"] + 0.08
