"""Landmark sets, official line drawing / masks (bit-exact against the golden loader outputs)."""
import json
from pathlib import Path

import pytest
import torch

from mp_lightning.errors import DataError
from mp_lightning.landmarks import (
    LandmarkSpec, default_palette, draw_landmark_lines, eye_mask, gaze_heatmaps, gaze_points, metaportrait_inputs,
    mouth_mask,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
GOLDEN = REFERENCE / "golden" / "metaportrait" / "base_io.pt"
needs_golden = pytest.mark.skipif(not GOLDEN.is_file(), reason="golden reference data absent")


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


def test_default_palette_reproduces_official_table():
    spec = LandmarkSpec.official669()
    assert len(spec.edges) == 616 and spec.num_points == 669
    assert default_palette(616) == list(spec.colors)
    assert len(default_palette(40)) == 40


@pytest.mark.skipif(not (REFERENCE / "metaportrait" / "ldmk_line_edges_palette.tsv").is_file(), reason="no reference")
def test_asset_matches_reference_tsv():
    rows = (REFERENCE / "metaportrait" / "ldmk_line_edges_palette.tsv").read_text().split("\n")[1:]
    rows = [tuple(int(t) for t in r.split("\t")) for r in rows if r.strip()]
    spec = LandmarkSpec.official669()
    assert [r[1:3] for r in rows] == spec.edges and [r[3:6] for r in rows] == spec.colors


def test_official_anchor_ids():
    spec = LandmarkSpec.official669()
    assert spec.gaze_ids == [619, 466, 469, 464, 308, 152, 305, 150]
    assert spec.mouth_x_ids == [541, 61] and spec.mouth_y_ids == [636, 74]
    assert spec.eye_ids == [505, 338, 398, 347, 35, 191, 30, 32]


def test_from_json_preset_custom_and_errors(tmp_path):
    assert LandmarkSpec.from_json({"preset": "official669"}).num_points == 669
    d = {"name": "tri", "num_points": 4, "edges": [[0, 1], [1, 2], [2, 3]], "flip_permutation": [1, 0, 2, 3],
         "eye_ids": [0, 1], "mouth_x_ids": [2, 3], "mouth_y_ids": [2, 3], "gaze_ids": [0, 1]}
    p = tmp_path / "landmarks.json"
    p.write_text(json.dumps(d))
    spec = LandmarkSpec.from_json(p)
    assert len(spec.colors) == 3 and spec.colors == default_palette(3)
    assert LandmarkSpec.from_json(spec.to_dict()) == spec
    with pytest.raises(DataError):
        LandmarkSpec.from_json({"num_points": 2, "edges": [[0, 5]]})
    with pytest.raises(DataError):
        LandmarkSpec.from_json({"preset": "nope"})
    with pytest.raises(DataError):
        LandmarkSpec.from_json(tmp_path / "missing.json")


def test_custom_set_drawing_and_inputs():
    spec = LandmarkSpec(name="s", num_points=4, edges=[(0, 1), (2, 3)], eye_ids=[0, 1], mouth_x_ids=[2, 3],
                        mouth_y_ids=[2, 3], gaze_ids=[0, 1, 2])
    lm = torch.tensor([[[0.2, 0.2], [0.8, 0.2], [0.3, 0.7], [0.7, 0.8]]])
    lines = draw_landmark_lines(lm, spec, 32)
    assert lines.shape == (1, 3, 32, 32) and lines.max() > 0 and lines.min() >= 0 and lines.max() <= 1
    batch = {"source": torch.rand(1, 3, 32, 32), "source_landmarks": lm, "driving_landmarks": lm}
    out = metaportrait_inputs(batch, spec)
    assert out["eye_mask"].shape == (1, 1, 32, 32) and out["eye_mask"].sum() > 0
    assert out["mouth_mask"].sum() > 0
    assert out["gaze_points"].shape == (1, 3, 2)
    assert gaze_heatmaps(out["gaze_points"], 16).shape == (1, 3, 16, 16)


@needs_golden
def test_lines_bit_exact(golden):
    spec = LandmarkSpec.official669()
    i = golden["inputs"]
    for who in ("source", "driving"):
        assert torch.equal(draw_landmark_lines(i[f"{who}_ldmk_669"], spec, 256), i[f"{who}_line"])


@needs_golden
def test_masks_and_gaze_exact(golden):
    spec = LandmarkSpec.official669()
    i = golden["inputs"]
    assert torch.equal(eye_mask(i["driving_ldmk_669"], spec, 256), i["eye_mask"])
    assert torch.equal(mouth_mask(i["driving_ldmk_669"], spec, 256), i["mouth_mask"])
    assert torch.equal(gaze_points(i["driving_ldmk_669"], spec), i["gaze_points"])
    sub = torch.tensor(spec.subset_ids)
    assert torch.equal(i["driving_ldmk_669"][:, sub] * 2 - 1, i["driving_ldmk"])
    assert list(golden["meta"]["ldmk_idx"]) == spec.subset_ids


def test_retargeting_keeps_the_source_face_shape_and_moves_it_by_the_driving_motion():
    from mp_lightning.landmarks import retarget_landmarks

    g = torch.Generator().manual_seed(0)
    source = torch.rand(10, 2, generator=g) * 0.4 + 0.3
    other_face = torch.rand(10, 2, generator=g) * 0.6 + 0.2  # another person, another size
    motion = torch.zeros(3, 10, 2)
    motion[1, :5, 1] = 0.05  # e.g. the mouth opens
    motion[2] += torch.tensor([0.02, -0.01])  # the head moves
    driving = other_face + motion
    out = retarget_landmarks(source, driving, other_face)
    torch.testing.assert_close(out[0], source)  # the driving person's face shape does not leak
    size = lambda p: (p - p.mean(0)).square().sum(-1).mean().sqrt()  # noqa: E731
    scale = size(source) / size(other_face)
    torch.testing.assert_close(out - source, motion * scale)
    # batched (B, K, 2) with one initial frame per sample, as in a cross-identity batch
    torch.testing.assert_close(retarget_landmarks(source.expand(3, -1, -1), driving, other_face.expand(3, -1, -1)), out)
