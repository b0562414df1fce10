"""The refinement stage takes the source identity from `<clip>.identity.npy` only when the data declares it of
the face embedder's kind and size (ROOT/identity.json), and never uses an embedding of another kind or size."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mp_lightning.errors import DataError

RANDOM_KIND = "facenet-random-seed0"  # what the tiny configs' random-weight embedder maps into


def _root_with_identities(tiny_data: Path, tmp_path: Path, dim: int, declared: dict | None) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root, ignore=shutil.ignore_patterns("runs"))
    rng = np.random.default_rng(0)
    for lm in root.rglob("*.landmarks.npy"):
        v = rng.standard_normal(dim).astype(np.float32)
        np.save(lm.with_name(lm.name.replace(".landmarks.npy", ".identity.npy")), v / np.linalg.norm(v))
    if declared is not None:
        (root / "identity.json").write_text(json.dumps(declared))
    return root


def _stage_and_batch(built_stage, root: Path, *extra: str):
    built = built_stage("metaportrait/refine_tiny.yaml", *extra, data_root=root, seed=0)
    return built.stage.eval(), built.batch("val")


class _Calls:
    """Counts the face embedder's forward passes and remembers their batch sizes."""

    def __init__(self, module):
        self.sizes = []
        module.register_forward_hook(lambda m, args, out: self.sizes.append(args[0].shape[0]))


def test_declared_embeddings_replace_the_per_step_facenet_pass(built_stage, tiny_data, tmp_path):
    root = _root_with_identities(tiny_data, tmp_path, 512, {"kind": RANDOM_KIND, "dim": 512})
    stage, batch = _stage_and_batch(built_stage, root)
    assert batch["source_identity_kind"] == [RANDOM_KIND] * batch["source"].shape[0]
    calls = _Calls(stage.face_embedder)
    with torch.no_grad():
        out = stage(batch)
        assert calls.sizes == []  # no facenet pass on the source
        assert out["source_embedding"] is batch["source_identity"]
        ref = stage.generator.refine(batch["source"], stage.warp(stage.prepare(batch)), batch["source_identity"],
                                     *(stage.prepare(batch)[k] for k in ("source_line", "driving_line", "gaze_points",
                                                                         "mouth_mask")))
        assert torch.equal(out["prediction_raw"], ref)
        terms = stage.generator_losses(stage.prepare(batch), out, adversarial=False)
    assert calls.sizes == [batch["source"].shape[0]]  # the identity loss embeds only the prediction
    assert torch.isfinite(terms["identity"])

    # model.identity.reuse_precomputed=false: the source frame is embedded as before
    stage, batch = _stage_and_batch(built_stage, root, "model.identity.reuse_precomputed=false")
    calls = _Calls(stage.face_embedder)
    with torch.no_grad():
        stage(batch)
    assert len(calls.sizes) == 1


@pytest.mark.parametrize("declared", [None, {"kind": "facenet-vggface2", "dim": 512}])
def test_embeddings_of_another_or_undeclared_kind_are_not_used(built_stage, tiny_data, tmp_path, declared):
    root = _root_with_identities(tiny_data, tmp_path, 512, declared)
    stage, batch = _stage_and_batch(built_stage, root)
    calls = _Calls(stage.face_embedder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = stage(batch)
            stage(batch)
    assert len(calls.sizes) == 2  # facenet on the source, each forward
    assert not torch.equal(out["source_embedding"], batch["source_identity"])
    notes = [str(w.message) for w in caught if "source_identity" in str(w.message)]
    assert len(notes) == 1 and ".identity.npy" in notes[0] and RANDOM_KIND in notes[0]


def test_wrong_size_is_an_error_naming_the_file(built_stage, tiny_data, tmp_path):
    # declared 512-d but the files are 256-d (e.g. the official ids copied over): the loader refuses
    root = _root_with_identities(tiny_data, tmp_path, 256, {"kind": RANDOM_KIND, "dim": 512})
    with pytest.raises(DataError, match=r"\.identity\.npy holds a 256-d embedding.*512-d"):
        _stage_and_batch(built_stage, root)
    # a batch claiming the embedder's kind with the wrong size (built by hand) is refused by the stage
    root = _root_with_identities(tiny_data, tmp_path / "b", 512, {"kind": RANDOM_KIND, "dim": 512})
    stage, batch = _stage_and_batch(built_stage, root)
    batch["source_identity"] = batch["source_identity"][:, :256]
    with pytest.raises(DataError, match=r"identity\.npy.*256-d, not 512"):
        stage(batch)


def test_precomputed_source_checks_the_size(built_stage, tiny_data, tmp_path):
    root = _root_with_identities(tiny_data, tmp_path, 512, None)
    stage, batch = _stage_and_batch(built_stage, root, "model.identity.source=precomputed", "model.net.identity_dim=256")
    with pytest.raises(DataError, match=r"\.identity\.npy.*512-d but model\.net\.identity_dim is 256"):
        stage(batch)


def test_identity_description_of_an_older_preprocessed_root(tmp_path):
    from datamodules.clips import load_identity_description

    assert load_identity_description(tmp_path) is None
    (tmp_path / "preprocess_report.json").write_text(json.dumps({"identity_embeddings": "written"}))
    assert load_identity_description(tmp_path)["kind"] == "facenet-vggface2"
    (tmp_path / "identity.json").write_text(json.dumps({"kind": "arcface-r100", "dim": 512}))
    assert load_identity_description(tmp_path) == {"kind": "arcface-r100", "dim": 512}
    (tmp_path / "identity.json").write_text(json.dumps({"dim": 512}))
    with pytest.raises(DataError, match="identity.json"):
        load_identity_description(tmp_path)


def test_preprocess_declares_its_embeddings(tmp_path):
    from datamodules.clips import load_identity_description
    from mp_lightning.preprocess.pipeline import write_identity_description

    write_identity_description(tmp_path)
    desc = load_identity_description(tmp_path)
    assert desc["kind"] == "facenet-vggface2" and desc["dim"] == 512
