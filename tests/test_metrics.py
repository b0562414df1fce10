"""Evaluation metrics: each equals the reference library on the same tensors; the suite picks batch keys."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mp_lightning.metrics.fid import fid_unavailable_reason
from mp_lightning.metrics.identity import AED, IdentitySimilarity, identity_separation
from mp_lightning.metrics.keypoints import AKD
from mp_lightning.metrics.perceptual import LPIPS
from mp_lightning.metrics.pixel import L1, PSNR, SSIM
from mp_lightning.metrics.suite import MetricsConfig, MetricSuite
from mp_lightning.metrics.temporal import TemporalWarpingError
from mp_lightning.errors import ConfigError, MissingWeightsError
from mp_lightning.networks.identity import FaceEmbedder

H = 48


def _images(seed, b=3, h=H):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, h, generator=g)


@pytest.fixture(scope="module")
def embedder():
    return FaceEmbedder(pretrained=False)


def _offline_config(**changes):
    cfg = MetricsConfig()
    # the networks of the `metrics` extra (st_lpips, dlib) have their own tests in test_offline_metrics.py
    cfg.enabled = ["lpips", "psnr", "ssim", "l1", "id_similarity", "aed", "akd", "warp_error"]
    cfg.lpips.pretrained = False
    cfg.identity.pretrained = False
    cfg.akd.detector = None  # AKD from the stage's landmarks; the mediapipe detector has a test of its own
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


# ------------------------------------------------------------------------------------ pixel metrics
def test_psnr_ssim_l1_equal_torchmetrics_functional():
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    p1, t1, p2, t2 = _images(0), _images(1), _images(2, b=2), _images(3, b=2)
    psnr, ssim, l1 = PSNR(), SSIM(), L1()
    for p, t in ((p1, t1), (p2, t2)):
        psnr.update(p, t)
        ssim.update(p, t)
        l1.update(p, t)
    p, t = torch.cat([p1, p2]), torch.cat([t1, t2])
    per_image_psnr = torch.stack([peak_signal_noise_ratio(a[None], b[None], data_range=1.0) for a, b in zip(p, t)])
    per_image_ssim = torch.stack(
        [structural_similarity_index_measure(a[None], b[None], data_range=1.0) for a, b in zip(p, t)]
    )
    assert psnr.compute().item() == pytest.approx(per_image_psnr.mean().item(), rel=1e-6)
    assert ssim.compute().item() == pytest.approx(per_image_ssim.mean().item(), rel=1e-6)
    assert l1.compute().item() == pytest.approx((p - t).abs().mean().item(), rel=1e-6)


def test_metric_without_data_is_nan():
    assert math.isnan(PSNR().compute().item())


# -------------------------------------------------------------------------------------------- LPIPS
@pytest.mark.parametrize("net", ["alex", pytest.param("vgg", marks=pytest.mark.slow)])  # building VGG16: ~15 s
def test_lpips_equals_the_lpips_package_with_the_same_seeded_trunk(net):
    import lpips

    p, t = _images(4, b=2, h=64), _images(5, b=2, h=64)
    metric = LPIPS(net=net, pretrained=False, seed=7)
    metric.update(p, t)
    torch.manual_seed(7)
    reference = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    with torch.no_grad():
        expected = reference(p, t, normalize=True).mean().item()  # normalize=True: its own [0,1] -> [-1,1]
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)
    identical = LPIPS(net=net, pretrained=False)
    identical.update(p, p)
    assert identical.compute().item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("net, filename", [("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")])
def test_lpips_without_backbone_weights_names_the_file(net, filename, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        LPIPS(net=net, pretrained=True)
    assert filename in str(err.value) and "mp-lightning weights" in str(err.value)


def test_lpips_weights_stay_out_of_the_state_dict_but_follow_to():
    metric = LPIPS(pretrained=False)
    assert metric.state_dict() == {}
    metric.to(torch.float64)  # dtype casts leave the frozen trunk in float32
    assert next(metric.net.parameters()).dtype == torch.float32


# ----------------------------------------------------------------------------------------- identity
def test_identity_similarity_and_aed_equal_hand_computation(embedder):
    p, s = _images(6, b=2), _images(7, b=2)
    sim, aed = IdentitySimilarity(embedder), AED(embedder)
    sim.update(p, s)
    aed.update(p, s)
    with torch.no_grad():
        ep, es = embedder(p), embedder(s)
    expected_sim = (ep * es).sum(1) / (ep.norm(dim=1) * es.norm(dim=1))
    expected_aed = ((ep - es) ** 2).sum(1).sqrt()
    assert sim.compute().item() == pytest.approx(expected_sim.mean().item(), abs=1e-6)
    assert aed.compute().item() == pytest.approx(expected_aed.mean().item(), abs=1e-6)
    # precomputed embeddings are accepted as such
    sim2 = IdentitySimilarity(embedder)
    sim2.update(ep, es)
    assert sim2.compute().item() == pytest.approx(sim.compute().item(), abs=1e-9)


def test_identity_metrics_share_one_embedder(embedder):
    suite = MetricSuite(_offline_config(enabled=["id_similarity", "aed"], fid=False), embedder=embedder)
    assert suite.metrics["id_similarity_random"].embedder is suite.metrics["aed_random"].embedder is embedder
    assert suite.state_dict() == {}


def test_one_source_expanded_over_frames_is_embedded_once_with_the_same_values(embedder):
    preds, source = _images(0, b=4), _images(1, b=1)
    calls = []
    counting = lambda x: calls.append(x.shape[0]) or embedder(x)  # noqa: E731
    values = {}
    for name, src in (("copies", source.repeat(4, 1, 1, 1)), ("expanded", source.expand(4, -1, -1, -1))):
        suite = MetricSuite(_offline_config(enabled=["id_similarity", "aed"], fid=False), embedder=counting,
                            reference_available=False)
        calls.clear()
        suite.update({"prediction": preds}, {"source": src})
        values[name], values[name + "_calls"] = suite.compute(), list(calls)
    assert values["expanded"] == pytest.approx(values["copies"], abs=1e-6)
    assert values["copies_calls"] == [4, 4] and values["expanded_calls"] == [4, 1]


# ---------------------------------------------------------------------------------------------- AKD
def test_identity_separation_equals_counting_every_pair():
    g = torch.Generator().manual_seed(0)
    people = ["a", "b", "c"] * 4
    # each person a direction of their own plus noise: separable, but not perfectly
    centres = {p: torch.randn(8, generator=g) for p in "abc"}
    x = torch.stack([centres[p] + 0.9 * torch.randn(8, generator=g) for p in people])
    result = identity_separation(x, people)

    same, other = [], []
    for i in range(len(people)):
        for j in range(i + 1, len(people)):
            score = float(F.cosine_similarity(x[i], x[j], dim=0))
            (same if people[i] == people[j] else other).append(score)
    # the chance that a same-person pair is more alike than a pair of two people (ties count half)
    wins = sum((s > o) + 0.5 * (s == o) for s in same for o in other)
    assert result["same_pairs"] == len(same) == 18 and result["other_pairs"] == len(other) == 48
    assert result["cosine_same"] == pytest.approx(np.mean(same), abs=1e-6)
    assert result["cosine_other"] == pytest.approx(np.mean(other), abs=1e-6)
    assert result["cosine_auc"] == pytest.approx(wins / (len(same) * len(other)), abs=1e-6)
    assert 0.5 < result["cosine_auc"] < 1  # the case is neither blind nor trivial


def test_identity_separation_is_blind_to_a_mislabelled_set_and_needs_two_people():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    assert identity_separation(x, ["p", "p", "q", "q"])["cosine_auc"] == 1.0
    assert identity_separation(x, ["p", "p", "q", "q"])["distance_auc"] == 1.0
    # each "person" one face of each cluster: their own pairs are the least alike
    assert identity_separation(x, ["p", "q", "p", "q"])["cosine_auc"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="two people"):
        identity_separation(x, ["p"] * 4)
    with pytest.raises(ValueError, match="4 embeddings but 3 labels"):
        identity_separation(x, ["p", "q", "p"])


def test_akd_precomputed_landmarks_in_pixels():
    target = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])
    pred = target + torch.tensor([[[3 / 64, 4 / 64], [0.0, 0.0]]])  # first point 5 px off at 64 px
    akd = AKD()
    akd.update(target, pred_landmarks=pred, image_size=(64, 64))
    assert akd.compute().item() == pytest.approx(2.5)
    fomm_scale = AKD(image_size=256)  # reported at 256 px whatever the frame size
    fomm_scale.update(target, pred_landmarks=pred, preds=torch.zeros(1, 3, 64, 64))
    assert fomm_scale.compute().item() == pytest.approx(10.0)
    missed = AKD()
    missed.update(target, pred_landmarks=torch.tensor([[[float("nan"), 0.5], [0.25, 0.75]]]), image_size=(64, 64))
    assert missed.compute().item() == pytest.approx(0.0)  # the missed point is left out


def test_akd_with_a_detector():
    calls = []

    def detector(images):
        calls.append(images.shape)
        return torch.full((images.shape[0], 2, 2), 0.5)

    akd = AKD(detector=detector)
    akd.update(torch.full((2, 2, 2), 0.25), preds=torch.zeros(2, 3, 32, 32))
    assert calls == [(2, 3, 32, 32)]
    assert akd.compute().item() == pytest.approx(math.hypot(8, 8))
    with pytest.raises(ValueError, match="pred_landmarks"):
        AKD().update(torch.zeros(1, 2, 2), preds=torch.zeros(1, 3, 8, 8))


# ------------------------------------------------------------------------------- temporal warp error
def _texture(seed, h=64):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, h // 8, h // 8, generator=g), size=(h, h), mode="bicubic",
                         align_corners=False).clamp(0, 1)[0]


def test_warp_error_static_is_zero_flicker_is_not():
    frame = _texture(0)
    static = frame.expand(4, -1, -1, -1)[None]  # (1, T=4, 3, H, W)
    flicker = torch.stack([frame * (0.6 if t % 2 else 1.0) for t in range(4)])[None]
    lms = torch.rand(1, 1, 6, 2).expand(1, 4, 6, 2)
    results = {}
    for source in ("target", "prediction", "landmarks"):
        m = TemporalWarpingError(flow_source=source)
        m.update(static, target=static, landmarks=lms)
        results[source] = m.compute().item()
    assert max(results.values()) < 1e-3, results  # Farneback leaves sub-pixel noise at the borders
    m = TemporalWarpingError(flow_source="target")
    m.update(flicker, target=static)
    assert m.compute().item() > 0.1


def test_warp_error_follows_motion():
    # a texture translated by 2 px per frame: flow from the frames compensates the motion
    big = _texture(1, h=96)
    clip = torch.stack([big[:, 16:80, 16 + 2 * t:80 + 2 * t] for t in range(3)])[None]
    aligned = TemporalWarpingError(flow_source="target")
    aligned.update(clip, target=clip)
    shuffled = TemporalWarpingError(flow_source="target")
    shuffled.update(clip.flip(1).roll(1, dims=1), target=clip)
    assert aligned.compute().item() < 0.02
    assert shuffled.compute().item() > 2 * aligned.compute().item()


# -------------------------------------------------------------------------------------------- suite
def _pairs_batch(b=2, k=5):
    return {
        "source": _images(10, b), "driving": _images(11, b),
        "source_landmarks": torch.rand(b, k, 2), "driving_landmarks": torch.rand(b, k, 2),
    }


def test_suite_self_reenactment_keys_and_values(embedder):
    batch = _pairs_batch()
    outputs = {"prediction": (batch["driving"] * 0.9 + 0.05), "prediction_landmarks": torch.rand(2, 5, 2)}
    suite = MetricSuite(_offline_config(), embedder=embedder)
    suite.update(outputs, batch)
    values = suite.compute()
    # random trunks: never logged under the published names
    assert set(values) == {"lpips_random", "psnr", "ssim", "l1", "id_similarity_random", "aed_random", "akd"}
    assert all(isinstance(v, float) for v in values.values())
    l1 = L1()
    l1.update(outputs["prediction"], batch["driving"])
    assert values["l1"] == pytest.approx(l1.compute().item())
    aed = AED(embedder)
    aed.update(outputs["prediction"], batch["driving"])  # FOMM: against the ground truth
    assert values["aed_random"] == pytest.approx(aed.compute().item())
    suite.reset()
    assert suite.compute() == {}


def test_suite_cross_identity_has_no_reference_metrics(embedder):
    batch = _pairs_batch()
    batch["driving_clip"] = ["test/id01/v/c"] * 2  # cross_identity mode marker
    outputs = {"prediction": _images(12, 2)}
    # lpips left out only to save building its trunk again; psnr/l1 stand for the reference metrics
    suite = MetricSuite(_offline_config(enabled=["psnr", "l1", "id_similarity", "aed", "akd"], fid=False),
                        embedder=embedder)
    suite.update(outputs, batch)
    values = suite.compute()
    assert set(values) == {"id_similarity_random", "aed_random"}
    aed = AED(embedder)
    aed.update(outputs["prediction"], batch["source"])
    assert values["aed_random"] == pytest.approx(aed.compute().item())
    assert "akd" in suite.new_skip_reasons() and suite.new_skip_reasons() == {}  # reported once
    forced = MetricSuite(_offline_config(enabled=["psnr", "aed"], fid=False), embedder=embedder,
                         reference_available=False)
    forced.update(outputs, _pairs_batch())
    assert set(forced.compute()) == {"aed_random"}


def test_suite_clips(embedder):
    frames = torch.stack([_texture(3)] * 3)[None].repeat(2, 1, 1, 1, 1)  # (2, 3, 3, 64, 64) static
    batch = {"frames": frames, "frames_landmarks": torch.rand(2, 3, 5, 2), "source": frames[:, 0],
             "driving": frames[:, -1]}
    suite = MetricSuite(_offline_config(enabled=["l1", "warp_error", "id_similarity"], fid=False), embedder=embedder)
    suite.update({"prediction": frames}, batch)
    values = suite.compute()
    assert values["l1"] == 0.0 and values["warp_error"] < 1e-3
    assert suite.metrics["id_similarity_random"].count.item() == 6  # every frame of every clip


def test_suite_config_from_mapping_and_errors():
    suite = MetricSuite({"enabled": ["psnr"], "fid": False})
    assert list(suite.metrics) == ["psnr"]
    with pytest.raises(ConfigError, match="unknown metric"):
        MetricSuite({"enabled": ["psnr", "csim"]})
    with pytest.raises(ConfigError, match="nett"):
        MetricSuite({"lpips": {"nett": "alex"}})


def test_fid_is_skipped_with_a_reason(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    assert "torch-fidelity" in fid_unavailable_reason()
    suite = MetricSuite({"enabled": ["psnr"], "fid": True})
    assert "fid" not in suite.metrics and "torch-fidelity" in suite.skipped["fid"]


def test_fid_without_its_inception_file_is_skipped_naming_the_file(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity", reason="torch-fidelity is a dependency; this checks the weights message")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reason = fid_unavailable_reason()
    assert "weights-inception-2015-12-05-6726825d.pth" in reason and str(tmp_path) in reason
    suite = MetricSuite({"enabled": ["psnr"], "fid": True})
    assert "fid" not in suite.metrics and suite.skipped["fid"] == reason


def test_akd_runs_mediapipe_on_the_prediction_and_the_ground_truth(tiny_data):
    from mp_lightning.io.video import read_video
    from mp_lightning.metrics.keypoints import mediapipe_unavailable_reason

    reason = mediapipe_unavailable_reason()
    if reason:
        suite = MetricSuite({"enabled": ["akd"], "fid": False})
        assert "akd" not in suite.metrics and suite.skipped["akd"] == reason
        pytest.skip(reason)
    clip = sorted((tiny_data / "test").rglob("*.mp4"))[0]
    gt = torch.from_numpy(np.asarray(read_video(clip))[:4]).permute(0, 3, 1, 2).float() / 255
    gt = torch.nn.functional.interpolate(gt, size=(128, 128), mode="bilinear", align_corners=False)
    shifted = torch.roll(gt, shifts=4, dims=3)  # the whole face 4 px to the right
    values = {}
    for name, prediction in (("same", gt), ("shifted", shifted)):
        suite = MetricSuite({"enabled": ["akd"], "fid": False})
        suite.update({"prediction": prediction}, {"driving": gt, "source": gt[:1].expand_as(gt)})
        values[name] = suite.compute()
    assert values["same"]["akd"] == pytest.approx(0.0, abs=1e-6) and values["same"]["akd_no_face"] == 0
    assert values["shifted"]["akd"] == pytest.approx(4.0, abs=1.0)


def test_arcface_identity_metrics_skip_without_their_file_and_run_with_it(tmp_path, monkeypatch):
    from mp_lightning.io.weights import WEIGHTS
    from mp_lightning.networks import arcface

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = {"enabled": ["id_similarity_arcface", "aed_arcface"], "fid": False}
    suite = MetricSuite(config)
    assert not suite.metrics and "arcface_r100_ms1mv3_backbone.pth" in suite.skipped["id_similarity_arcface"]
    # a backbone file in insightface's layout (a shallow one: the released IResNet-100 is 250 MB)
    monkeypatch.setitem(arcface.DEPTHS, "r100", (1, 1, 1, 1))
    path = WEIGHTS["arcface_r100"].path
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    net = arcface.IResNet("r100")
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))):
            bn.running_var.uniform_(0.5, 2.0)  # released statistics, not the defaults
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # DDP-saved, as released files are
    images = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    suite = MetricSuite(config)
    suite.update({"prediction": images}, {"driving": images, "source": images})
    same = suite.compute()
    assert same["id_similarity_arcface"] == pytest.approx(1.0, abs=1e-5) and same["aed_arcface"] == pytest.approx(0.0, abs=1e-5)
    suite = MetricSuite(config)
    suite.update({"prediction": images}, {"driving": images, "source": images.flip(0)})
    assert suite.compute()["id_similarity_arcface"] < 0.999
    torch.save({k: v for k, v in net.state_dict().items() if k != "features.weight"}, path)
    with pytest.raises(Exception, match="features.weight"):
        MetricSuite(config)
