"""decord must be loaded after OpenCV, or OpenCV's PNG codec breaks in that process (decord's old zlib)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

PNG_ROUND_TRIP = """
from datamodules.clips import import_decord
import_decord()
import cv2, numpy as np
ok, enc = cv2.imencode('.png', (np.random.rand(32, 32, 3) * 255).astype(np.uint8))
assert ok and cv2.imdecode(enc, cv2.IMREAD_COLOR) is not None, 'PNG codec broken after decord'
"""


def test_png_codec_survives_loading_decord_first():
    done = subprocess.run([sys.executable, "-c", PNG_ROUND_TRIP], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
