"""Official FOMM checkpoint import reproduces the official code's outputs (golden data, BASELINES.md 1.4).

The golden outputs were made on a modern torch, i.e. grid_sample align_corners=False, so the networks
are loaded with align_corners=False here. Measured max differences when written: 0.0 for every entry.
Over 9 CPU kernel settings of an AVX-512 machine (`python benchmarks/golden_spread.py --cases fomm`): keypoints and
jacobians <= 2.9e-6, images/maps <= 2.5e-5, train mode <= 8.9e-6, so the README's tolerances keep >= 3.5x margin.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mp_lightning.checkpoints.fomm import load_official_fomm
from mp_lightning.networks.fomm_motion import normalize_kp, transfer_motion
from mp_lightning.networks.fomm import set_align_corners

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "golden"
CKPT = GOLDEN / "fomm_vox256_golden_ckpt.pth.tar"
IO = GOLDEN / "fomm_vox256_golden_io.pt"

pytestmark = pytest.mark.skipif(not (CKPT.is_file() and IO.is_file()), reason="golden FOMM data not present")

KP_TOL, IMG_TOL, TRAIN_TOL = 1e-5, 1e-4, 5e-4


def _maxdiff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def golden():
    return torch.load(IO, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def nets():
    kp, gen, disc, info = load_official_fomm(CKPT, align_corners=False)
    return kp, gen, info


@pytest.fixture(scope="module")
def eval_outputs(golden, nets):
    kp, gen, _ = nets
    x = golden["inputs"]
    with torch.no_grad():
        kps = {name: kp(x[name]) for name in ("source", "driving", "driving_initial")}
        gen_out = gen(x["source"], kp_driving=golden["kp_driving"], kp_source=golden["kp_source"])
    return kps, gen_out


def test_import_info(nets):
    _, _, info = nets
    assert info["align_corners"] is False and info["align_corners_source"] == "argument"
    assert info["fp16_tensors_converted"] == 35
    assert info["discriminator"] == "absent" and info["epoch"] == 0


@pytest.mark.parametrize("name", ["source", "driving", "driving_initial"])
def test_keypoints_and_jacobians(golden, eval_outputs, name):
    kps, _ = eval_outputs
    ref = golden[f"kp_{name}"]
    assert _maxdiff(kps[name]["value"], ref["value"]) <= KP_TOL
    assert _maxdiff(kps[name]["jacobian"], ref["jacobian"]) <= KP_TOL


@pytest.mark.parametrize("key", ["prediction", "deformed", "occlusion_map", "mask", "sparse_deformed"])
def test_generator_outputs(golden, eval_outputs, key):
    _, out = eval_outputs
    assert _maxdiff(out[key], golden["generator_out"][key]) <= IMG_TOL


def test_dense_motion_deformation(golden, eval_outputs):
    _, out = eval_outputs
    assert _maxdiff(out["deformation"], golden["dense_motion_out"]["deformation"]) <= IMG_TOL


def test_relative_motion_with_adapted_scale(golden, nets):
    kp, gen, _ = nets
    ref = golden["relative"]
    kp_norm = normalize_kp(golden["kp_source"], golden["kp_driving"], golden["kp_driving_initial"],
                           adapt_movement_scale=True, use_relative_movement=True, use_relative_jacobian=True)
    assert _maxdiff(kp_norm["value"], ref["kp_norm"]["value"]) <= KP_TOL
    assert _maxdiff(kp_norm["jacobian"], ref["kp_norm"]["jacobian"]) <= KP_TOL
    same = transfer_motion(golden["kp_source"], golden["kp_driving"], golden["kp_driving_initial"], mode="relative")
    assert torch.equal(same["value"], kp_norm["value"])
    with torch.no_grad():
        pred = gen(golden["inputs"]["source"], kp_driving=kp_norm, kp_source=golden["kp_source"])["prediction"]
    assert _maxdiff(pred, ref["prediction"]) <= IMG_TOL


@pytest.mark.slow
def test_train_mode_batch_statistics(golden, nets):
    kp, gen, _ = nets
    kp, gen = copy.deepcopy(kp).train(), copy.deepcopy(gen).train()
    x, ref = golden["inputs"], golden["train_mode"]
    with torch.no_grad():
        kb = kp(torch.cat([x["source"], x["driving"]]))
        out = gen(x["source"], kp_driving=golden["kp_driving"], kp_source=golden["kp_source"])
    assert _maxdiff(kb["value"], ref["kp_batch_source_driving"]["value"]) <= TRAIN_TOL
    assert _maxdiff(kb["jacobian"], ref["kp_batch_source_driving"]["jacobian"]) <= TRAIN_TOL
    assert _maxdiff(out["prediction"], ref["prediction"]) <= TRAIN_TOL
    assert _maxdiff(out["occlusion_map"], ref["occlusion_map"]) <= TRAIN_TOL


@pytest.mark.slow
def test_official_convention_is_detected_by_the_data(golden, nets):
    # the released checkpoint's convention (True) must be reachable and visibly different (~0.32 max)
    kp, gen, _ = nets
    gen = set_align_corners(copy.deepcopy(gen), True)
    with torch.no_grad():
        pred = gen(golden["inputs"]["source"], kp_driving=golden["kp_driving"], kp_source=golden["kp_source"])
    diff = (pred["prediction"] - golden["generator_out"]["prediction"]).abs()
    assert diff.max() > 0.1 and diff.mean() > 0.01
