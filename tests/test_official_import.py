"""`import-checkpoint metaportrait` end to end: the official file, our checkpoint, `load_stage`, and the
official outputs reproduced from the landmarks alone (lines, masks and gaze derived as the official loader does)."""
from __future__ import annotations

import pytest
import torch

from mp_lightning import load_stage
from mp_lightning.cli import main
from tests.conftest import METAPORTRAIT_GOLDEN_ATOL as ATOL
from tests.conftest import REFERENCE

GOLDEN = REFERENCE / "golden" / "metaportrait"
pytestmark = pytest.mark.skipif(not (GOLDEN / "base_ckpt.pth.tar").is_file(), reason="golden data not present")


@pytest.mark.slow
def test_imported_official_checkpoint_reproduces_the_golden_outputs(tmp_path):
    out = tmp_path / "official.ckpt"
    assert main(["import-checkpoint", "metaportrait", str(GOLDEN / "base_ckpt.pth.tar"), "--out", str(out)]) == 0
    stage = load_stage(out)
    assert not stage.training and type(stage).__name__ == "RefineStage"
    io = torch.load(GOLDEN / "base_io.pt", map_location="cpu", weights_only=True)
    inputs, expected = io["inputs"], io["outputs"]
    batch = {  # only what a user has: the image, the raw 669-point landmarks and the 256-d identity
        "source": inputs["source"],
        "source_landmarks": inputs["source_ldmk_669"],
        "driving_landmarks": inputs["driving_ldmk_669"],
        "source_identity": inputs["source_id"],
    }
    with torch.no_grad():
        got = stage(batch)
    torch.testing.assert_close(got["prediction_raw"], expected["prediction"], atol=ATOL["prediction"], rtol=0)
    torch.testing.assert_close(got["prediction"], expected["prediction"].clamp(0, 1), atol=ATOL["prediction"], rtol=0)
    for key in ("deformed", "occlusion_map", "deformation"):
        torch.testing.assert_close(got[key], expected[key], atol=ATOL[key], rtol=0)
