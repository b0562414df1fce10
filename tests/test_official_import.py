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


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("official") / "official.ckpt"
    assert main(["import-checkpoint", "metaportrait", str(GOLDEN / "base_ckpt.pth.tar"), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_imported_official_checkpoint_reproduces_the_golden_outputs(official_ckpt):
    stage = load_stage(official_ckpt)
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


@pytest.mark.slow
def test_imported_official_checkpoint_animates_a_clip_with_its_source_identity(official_ckpt, tmp_path, capsys):
    """The official weights condition on a precomputed 256-d identity: `animate` takes it from
    --source-identity or SOURCE.identity.npy, and says what is missing when neither exists."""
    import numpy as np

    from mp_lightning.io.video import read_video, write_image, write_video

    ckpt = official_ckpt
    inputs = torch.load(GOLDEN / "base_io.pt", map_location="cpu", weights_only=True)["inputs"]
    source = tmp_path / "face.png"
    write_image(source, inputs["source"][0])
    np.save(tmp_path / "face.landmarks.npy", inputs["source_ldmk_669"][:1].numpy())
    driving = tmp_path / "driving.mp4"  # 3 frames: driving landmarks of both golden samples, then the source's
    write_video(driving, inputs["source"][[1, 0, 1]], fps=10)
    lms = torch.stack([inputs["driving_ldmk_669"][0], inputs["driving_ldmk_669"][1], inputs["source_ldmk_669"][0]])
    np.save(tmp_path / "driving.landmarks.npy", lms.numpy())
    args = ["animate", "--checkpoint", str(ckpt), "--source", str(source), "--driving", str(driving), "--device", "cpu"]

    assert main([*args, "--out", str(tmp_path / "none.mp4")]) != 0
    assert "--source-identity" in capsys.readouterr().err

    np.save(tmp_path / "id.npy", inputs["source_id"][0].numpy())
    assert main([*args, "--out", str(tmp_path / "given.mp4"), "--source-identity", str(tmp_path / "id.npy")]) == 0
    given = read_video(tmp_path / "given.mp4")
    assert given.shape[0] == 3

    np.save(tmp_path / "face.identity.npy", inputs["source_id"][1].numpy())  # picked up beside the source
    assert main([*args, "--out", str(tmp_path / "beside.mp4")]) == 0
    beside = read_video(tmp_path / "beside.mp4")
    # another identity vector changes the refined frames: the identity reaches the network
    assert np.abs(beside.astype(np.float32) - given.astype(np.float32)).mean() > 0.5
