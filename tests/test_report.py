"""Runs that can be looked at offline: local loggers, media files, and the self-contained HTML report."""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mp_lightning.cli import main
from tests.conftest import EXPERIMENTS, tiny_overrides

WARP_TINY = EXPERIMENTS / "metaportrait" / "warp_tiny.yaml"
RUN = ("trainer.max_steps=4", "trainer.log_every_n_steps=1", "data.samples_per_epoch=4", "trainer.check_val_every_n_epoch=1",
       "trainer.limit_val_batches=1", "callbacks.media.video_frames=4")


def _train(data, runs, name, logger, *extra) -> Path:
    assert main(["train", str(WARP_TINY), *tiny_overrides(data, runs, f"name={name}", f"logger.type={logger}",
                                                          *RUN, *extra)]) == 0
    return runs / name


@pytest.fixture(scope="module")
def csv_run(tiny_data, tmp_path_factory) -> Path:
    return _train(tiny_data, tmp_path_factory.mktemp("report"), "csv_run", "csv")


def test_csv_run_logs_cross_identity_validation_and_keeps_media_locally(csv_run):
    rows = list(csv.DictReader((csv_run / "csv" / "metrics.csv").open()))
    logged = {k for row in rows for k, v in row.items() if v not in ("", None)}
    assert {"train/loss", "val/l1", "val/psnr"} <= logged
    assert any(k.startswith("val/cross/") for k in logged)  # the cross-identity validation set
    assert not any(k.startswith("val/cross/") and k.endswith(("psnr", "l1", "ssim")) for k in logged)  # no ground truth
    assert list((csv_run / "media").glob("val_samples_step*.png"))
    assert list((csv_run / "media").glob("val_clip_step*.mp4"))


def test_tensorboard_logger_writes_events_and_the_local_csv(tiny_data, tmp_path):
    pytest.importorskip("tensorboard", reason="logger.type=tensorboard needs the tensorboard package")
    run = _train(tiny_data, tmp_path, "tb", "tensorboard")
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "val/lpips" in (run / "csv" / "metrics.csv").read_text()


def test_unknown_logger_is_refused_naming_the_key(tiny_data, tmp_path, capsys):
    args = ["train", str(WARP_TINY), *tiny_overrides(tiny_data, tmp_path, "logger.type=mlflow")]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "logger.type" in err and "mlflow" in err and "tensorboard" in err  # the valid choices are listed


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")


def test_report_is_one_self_contained_page_that_renders_in_headless_chromium(csv_run, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(csv_run), "--out", str(out)]) == 0
    page = out.read_text()
    # self-contained: nothing is fetched from elsewhere
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    browser = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([browser, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    assert '<table class="metrics">' in rendered and "val/cross/" in rendered and "val/psnr" in rendered
    assert "<svg" in rendered and "data:image/png;base64," in rendered and "data:video/mp4;base64," in rendered
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    assert pixels.getextrema()[0] < 128  # something dark (text, plots) was drawn on the white page


def test_report_refuses_a_folder_with_nothing_to_report(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) != 0
    assert f"nothing to report in {tmp_path}" in capsys.readouterr().err
