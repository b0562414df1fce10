"""The offline metrics of the `metrics` extra: ST-LPIPS and dlib identity equal their reference packages on
the same inputs; without the extra the suite skips them and says how to install it."""
import base64
import hashlib

import numpy as np
import pytest
import torch

from mp_lightning.metrics.suite import MetricSuite
from mp_lightning.networks.dlib_face import dlib_unavailable_reason
from mp_lightning.networks.st_lpips import st_lpips_unavailable_reason

needs_stlpips = pytest.mark.skipif(st_lpips_unavailable_reason() is not None,
                                   reason=str(st_lpips_unavailable_reason()))
needs_dlib = pytest.mark.skipif(dlib_unavailable_reason() is not None, reason=str(dlib_unavailable_reason()))


def _faces(size=128):
    """Two frames of each of three synthetic identities, (6, 3, size, size) in [0, 1], and their identity."""
    from datamodules.synthetic import _identity_rng, make_identity, make_motion, render_background, render_frame

    frames, who = [], []
    for index in range(3):
        ident = make_identity(_identity_rng(0, index))
        bg = render_background(ident.background, size)
        motion = make_motion(np.random.default_rng(index), 16)
        for f in (0, 5):
            frames.append(render_frame(ident, motion, f, size, bg)[0])
            who.append(index)
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255, who


def _config(enabled):
    return {"enabled": enabled, "fid": False}


@needs_stlpips
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_st_lpips_equals_the_package(net):
    from mp_lightning.metrics.perceptual import STLPIPS
    from mp_lightning.networks.st_lpips import _import_stlpips

    faces, _ = _faces(64)
    preds, target = faces[:3], faces[3:]
    reference = _import_stlpips().LPIPS(net=net, variant="shift_tolerant", verbose=False)  # the package's loading
    expected = reference(preds, target, normalize=True).flatten()
    metric = STLPIPS(net)
    metric.update(preds[:2], target[:2])
    metric.update(preds[2:], target[2:])
    assert metric.compute().item() == pytest.approx(expected.mean().item(), rel=1e-5)
    # a real trunk: a 1 px shift is far closer than a different face (a random trunk does not separate them)
    same = STLPIPS(net)
    same.update(preds, torch.roll(preds, 1, dims=-1))
    assert same.compute().item() < 0.3 * metric.compute().item()


def test_st_lpips_file_is_the_shipped_one():
    """Checksum against the wheel's RECORD: the weights loaded are the published ones, not a stand-in."""
    if st_lpips_unavailable_reason() is not None:
        pytest.skip(st_lpips_unavailable_reason())
    from importlib.metadata import files

    from mp_lightning.networks.st_lpips import weights_path

    record = {str(f): f.hash for f in files("stlpips-pytorch") if f.hash}
    for net in ("alex", "vgg"):
        path = weights_path(net)
        entry = next(v for k, v in record.items() if k.endswith(f"{net}_shift_tolerant.pth"))
        digest = base64.urlsafe_b64encode(hashlib.sha256(open(path, "rb").read()).digest()).rstrip(b"=").decode()
        assert entry.mode == "sha256" and digest == entry.value


@needs_dlib
def test_dlib_identity_equals_dlib():
    import dlib

    from mp_lightning.networks.dlib_face import model_path

    faces, who = _faces(128)
    preds, source = faces[[0, 2, 4]], faces[[1, 3, 0]]  # same, same, different identity
    detector = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(model_path("shape_predictor"))
    net = dlib.face_recognition_model_v1(model_path("recognition"))

    def describe(x):
        image = np.ascontiguousarray((x.permute(1, 2, 0) * 255).round().byte().numpy())
        rect = detector(image, 0)[0]
        return np.array(net.compute_face_descriptor(image, shape(image, rect)))

    a = [describe(x) for x in preds]
    b = [describe(x) for x in source]
    cos = [float(u @ v / np.linalg.norm(u) / np.linalg.norm(v)) for u, v in zip(a, b)]
    dist = [float(np.linalg.norm(u - v)) for u, v in zip(a, b)]

    # frames already at the detection size: dlib sees exactly the pixels the reference sees
    suite = MetricSuite({**_config(["id_similarity_dlib", "aed_dlib"]), "dlib": {"detect_size": 128}},
                        reference_available=False)
    suite.update({"prediction": preds}, {"source": source})
    values = suite.compute()
    assert values["id_similarity_dlib"] == pytest.approx(np.mean(cos), rel=1e-5)
    assert values["aed_dlib"] == pytest.approx(np.mean(dist), rel=1e-5)
    assert values["dlib_no_face"] == 0
    # a real identity network: another synthetic person is farther than the same one in another pose
    assert dist[2] > 2 * max(dist[:2])


@needs_dlib
def test_dlib_frames_without_a_face_are_counted_not_averaged():
    faces, _ = _faces(128)
    noise = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    suite = MetricSuite(_config(["id_similarity_dlib"]), reference_available=False)
    suite.update({"prediction": torch.cat([faces[:1], noise])}, {"source": faces[1:4]})
    values = suite.compute()
    assert values["dlib_no_face"] == 2
    assert suite.metrics["id_similarity_dlib"].count.item() == 1  # only the pair with two faces
    only_noise = MetricSuite(_config(["id_similarity_dlib"]), reference_available=False)
    only_noise.update({"prediction": noise}, {"source": faces[:2]})
    assert only_noise.compute() == {"dlib_no_face": 2.0}  # no similarity at all, not a made-up one


@pytest.fixture
def without_the_extra(monkeypatch):
    """dlib and face-recognition-models not found, stlpips-pytorch not importable."""
    import importlib.util
    import sys

    real_find_spec = importlib.util.find_spec
    hidden = ("dlib", "face_recognition_models")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in hidden else real_find_spec(name, *args))
    monkeypatch.setitem(sys.modules, "stlpips_pytorch", None)  # `import stlpips_pytorch` -> ImportError
    for cached in (dlib_unavailable_reason, st_lpips_unavailable_reason):
        cached.cache_clear()
    yield
    for cached in (dlib_unavailable_reason, st_lpips_unavailable_reason):
        cached.cache_clear()


def test_missing_extra_is_skipped_with_the_install_command(without_the_extra):
    suite = MetricSuite(_config(["st_lpips", "id_similarity_dlib", "aed_dlib", "l1"]))
    assert list(suite.metrics) == ["l1"]
    for name in ("st_lpips", "id_similarity_dlib", "aed_dlib"):
        assert 'pip install -e ".[metrics]"' in suite.skipped[name], suite.skipped[name]


def test_random_networks_are_never_logged_under_the_published_name():
    suite = MetricSuite({"enabled": ["lpips", "id_similarity", "aed"], "lpips": {"pretrained": False},
                         "identity": {"pretrained": False}, "fid": False})
    assert set(suite.metrics) == {"lpips_random", "id_similarity_random", "aed_random"}


@needs_stlpips
def test_offline_perceptual_backbone_loads_the_shipped_trunk():
    from mp_lightning.networks.perceptual import VGGPerceptualLoss
    from mp_lightning.networks.st_lpips import weights_path

    loss = VGGPerceptualLoss(scales=[1.0, 0.5], backbone="st_lpips_vgg16")
    shipped = torch.load(weights_path("vgg"), map_location="cpu", weights_only=True)
    trunk = {f"net.{k}": v for k, v in loss.vgg.trunk.state_dict().items()}
    assert set(trunk) <= set(shipped) and len(trunk) == 26 + 4  # 13 convs (weight, bias) + 4 blur filters
    for key, value in trunk.items():
        assert torch.equal(value, shipped[key]), key
    assert not any(p.requires_grad for p in loss.parameters())
    faces, _ = _faces(64)
    shifted = torch.roll(faces[:2], 1, dims=-1)
    assert loss(faces[:2], faces[:2]).item() == 0
    assert loss(faces[:2], shifted).item() < 0.5 * loss(faces[:2], faces[[2, 4]]).item()
    loss.train()
    assert not loss.vgg.training  # frozen features stay in eval mode


def test_perceptual_backbone_names_are_checked():
    from mp_lightning.errors import ConfigError
    from mp_lightning.networks.perceptual import VGGPerceptualLoss

    with pytest.raises(ConfigError, match="backbone"):
        VGGPerceptualLoss(backbone="vgg21")
    with pytest.raises(ConfigError, match="no random variant"):
        VGGPerceptualLoss(backbone="st_lpips_vgg16", pretrained=False)
