"""`MetricSuite`: the talking-head metrics every stage reports, built from a `MetricsConfig`, and their registry
(`ALL_METRICS`, `REFERENCE_METRICS`, `METRIC_NETWORKS`). The metrics themselves are torchmetrics `Metric`s, one
file per family: `pixel` (PSNR, SSIM, L1), `perceptual` (LPIPS, ST-LPIPS), `identity` (similarity and AED on
FaceNet, ArcFace or dlib embeddings), `keypoints` (AKD), `temporal` (warping error), `fid`.

Every metric keeps a float64 running sum and a count with `dist_reduce_fx="sum"`, so under DDP the
value torchmetrics syncs is exactly the mean over all samples of all ranks (no mean-of-means).

| key            | metric                                                         | needs ground truth |
|----------------|----------------------------------------------------------------|--------------------|
| lpips          | LPIPS (lpips package, AlexNet default), mean per image          | yes                |
| st_lpips       | ST-LPIPS (stlpips-pytorch, shift-tolerant AlexNet; offline)     | yes                |
| psnr           | mean per-image PSNR, data range 1 (BasicSR convention)          | yes                |
| ssim           | mean per-image SSIM (torchmetrics, Gaussian 11x11, range 1)      | yes                |
| l1             | mean absolute error in [0, 1]                                   | yes                |
| id_similarity  | cosine of FaceNet (VGGFace2) embeddings, prediction vs source   | no                 |
| aed            | L2 distance of the same embeddings (FOMM's "average Euclidean   | no (uses the       |
|                | distance"), prediction vs ground truth, vs source without one   |  source then)      |
| id_similarity_dlib / aed_dlib | the same two on dlib's 128-d ResNet descriptors  | no                 |
|                | (offline; + `dlib_no_face`: predictions in which dlib found no face) |               |
| akd            | mean landmark distance in pixels, prediction vs driving         | no                 |
| fid            | torchmetrics FrechetInceptionDistance over the whole split      | no (real = ground  |
|                | (only when torch-fidelity and its Inception weights exist)      |  truth or source)  |
| warp_error     | temporal warping error of predicted clips (B, T, 3, H, W)       | flow from GT/pred  |

A metric whose network would be random (`lpips` without torchvision's AlexNet file and pretrained=false,
FaceNet without VGGFace2 weights) is logged as `<name>_random`, never under the published name; one whose
weights or package are missing is skipped with the reason in `MetricSuite.skipped`. `METRIC_NETWORKS`
says which network each logged number comes from (the eval's metrics.md prints it).

Frozen backbones (LPIPS trunk, FaceNet) are held outside the module tree: they move with `.to(device)`
but never enter a checkpoint's state dict, and two metrics can share one embedder.
"""
from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch import nn
from torchmetrics import Metric

from mp_lightning.batch import is_cross_identity
from mp_lightning.errors import ConfigError, MissingWeightsError
from mp_lightning.metrics.base import MissedFaces
from mp_lightning.metrics.fid import build_fid, fid_unavailable_reason
from mp_lightning.metrics.identity import AED, IdentitySimilarity
from mp_lightning.metrics.keypoints import AKD, MEDIAPIPE, LandmarkDetector, MediaPipeKeypoints, mediapipe_unavailable_reason
from mp_lightning.metrics.perceptual import LPIPS, STLPIPS
from mp_lightning.metrics.pixel import L1, PSNR, SSIM
from mp_lightning.metrics.temporal import TemporalWarpingError

# ------------------------------------------------------------------------------------------------ suite
@dataclass
class LPIPSConfig:
    net: str = "alex"  # "alex" (the published LPIPS) or "vgg"
    pretrained: bool = True  # false: seeded random trunk, offline tests only (values are not LPIPS)
    seed: int = 0  # seed of the random trunk when pretrained is false


@dataclass
class IdentityConfig:
    pretrained: bool = True  # facenet VGGFace2 weights (`mp-lightning weights`); false: seeded random, tests only
    align: str = "center"  # "center": fixed crop of face-centred frames; "mtcnn": detected face crop (slower)
    center_fraction: float = 0.8  # share of the frame's shorter side kept by the centre crop


@dataclass
class AKDConfig:
    # "mediapipe": the offline face mesh on the prediction and the ground-truth frame alike (skipped with the reason
    # where mediapipe is not installed); "pkg.module:factory": a detector of the data's own landmark set, compared
    # with the batch's driving landmarks; None: only a stage's own `prediction_landmarks`
    detector: Optional[str] = "mediapipe"
    image_size: Optional[int] = None  # report pixels at this side (FOMM: 256); None = the frames' own size


@dataclass
class WarpConfig:
    flow_source: str = "target"  # "target" (Farneback on ground truth), "prediction", or "landmarks"
    occlusion_check: bool = True  # forward-backward consistency mask for Farneback flows


@dataclass
class STLPIPSConfig:
    net: str = "alex"  # "alex" (default) or "vgg": the shift-tolerant trunks that ship in stlpips-pytorch


@dataclass
class DlibConfig:
    detect_size: int = 192  # frames smaller than this are upscaled before dlib's HOG detector (64 px: 93% found at 128, all at 192)
    upsample: int = 0  # dlib detector pyramid upsampling


ALL_METRICS = ("lpips", "st_lpips", "psnr", "ssim", "l1", "id_similarity", "aed", "id_similarity_dlib", "aed_dlib",
               "id_similarity_arcface", "aed_arcface", "akd", "warp_error")
REFERENCE_METRICS = ("lpips", "st_lpips", "psnr", "ssim", "l1", "warp_error")  # compare with ground truth

# which network each logged number comes from (metrics.md prints it beside the values)
METRIC_NETWORKS = {
    "lpips": "LPIPS v0.1, torchvision ImageNet AlexNet (lpips package)",
    "lpips_random": "LPIPS linear layers on a RANDOM AlexNet trunk: smoke test only, not LPIPS",
    "st_lpips": "ST-LPIPS, shift-tolerant ImageNet AlexNet (stlpips-pytorch wheel)",
    "id_similarity": "FaceNet InceptionResnetV1, VGGFace2 weights",
    "aed": "FaceNet InceptionResnetV1, VGGFace2 weights",
    "id_similarity_random": "RANDOM FaceNet: smoke test only, not an identity measure",
    "aed_random": "RANDOM FaceNet: smoke test only, not an identity measure",
    "id_similarity_dlib": "dlib ResNet face descriptor (HOG detector, 5-point alignment)",
    "aed_dlib": "dlib ResNet face descriptor (HOG detector, 5-point alignment)",
    "dlib_no_face": "count of predicted frames in which dlib's detector found no face",
    "id_similarity_arcface": "ArcFace IResNet-100 (MS1MV3) cosine: the published CSIM's network",
    "aed_arcface": "ArcFace IResNet-100 (MS1MV3) L2 distance",
    "psnr": "pixels", "ssim": "pixels", "l1": "pixels",
    "akd": "mediapipe face mesh on prediction and ground truth (metrics.akd.detector; FOMM used 2D-FAN), or the stage's landmarks",
    "akd_no_face": "count of pairs in which mediapipe found no face in the prediction or the ground truth",
    "fid": "torchmetrics FID, Inception (torch-fidelity weights)",
    "warp_error": "Farneback optical flow (OpenCV)",
}


@dataclass
class MetricsConfig:
    enabled: List[str] = field(default_factory=lambda: list(ALL_METRICS))  # subset of ALL_METRICS
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    st_lpips: STLPIPSConfig = field(default_factory=STLPIPSConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    dlib: DlibConfig = field(default_factory=DlibConfig)
    akd: AKDConfig = field(default_factory=AKDConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    fid: bool = True  # FID over the whole split; skipped (reason in MetricSuite.skipped) without torch-fidelity


def _as_config(config: Any) -> MetricsConfig:
    if config is None:
        return MetricsConfig()
    if isinstance(config, MetricsConfig):
        return config
    from omegaconf import OmegaConf

    try:
        merged = OmegaConf.merge(OmegaConf.structured(MetricsConfig), config)
    except Exception as err:  # omegaconf raises its own ValidationError / ConfigKeyError types
        raise ConfigError(f"metrics config: {err}") from err
    return OmegaConf.to_object(merged)


def _load_factory(spec: str) -> Callable[[], LandmarkDetector]:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"metrics.akd.detector must look like 'pkg.module:factory', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"metrics.akd.detector {spec!r} cannot be imported: {err}") from err


class MetricSuite(nn.Module):
    """The metrics every stage and baseline reports, built from a `MetricsConfig`.

    Args:
        config: `MetricsConfig`, or a mapping / OmegaConf node with the same keys (validated).
        landmark_detector: AKD detector callable (overrides `config.akd.detector`).
        embedder: a FaceEmbedder to share (e.g. the one the identity loss already holds).
        reference_available: default for `update` (a suite per evaluation set: self / cross-identity).

    `update(outputs, batch, reference_available=None)`:
        outputs["prediction"]: (B, 3, H, W) or clips (B, T, 3, H, W) in [0, 1];
        outputs["prediction_landmarks"] (optional): (B, K, 2) / (B, T, K, 2) in [0, 1], used by AKD;
        batch: a data-contract batch; `driving` (or `frames` for clips) is the ground truth, `source` the
            identity reference, `driving_landmarks` (`frames_landmarks`) the AKD target.
        reference_available: False when there is no ground truth (cross-identity): then only
            id_similarity, aed (against the source), akd and fid are updated. None = the constructor's
            value, else inferred: False for a cross-identity batch (`mp_lightning.batch.is_cross_identity`).
    `compute()` -> flat {"lpips": float, "id_similarity": ..., ...} with only the metrics that saw data
    (every rank must call it: it syncs under DDP). `skipped` maps a metric to why it cannot run.
    """

    def __init__(
        self,
        config: Any = None,
        landmark_detector: Optional[LandmarkDetector] = None,
        embedder: Optional[nn.Module] = None,
        reference_available: Optional[bool] = None,
    ):
        super().__init__()
        self.config = cfg = _as_config(config)
        self.reference_available = reference_available
        unknown = [n for n in cfg.enabled if n not in ALL_METRICS]
        if unknown:
            raise ConfigError(f"metrics.enabled: unknown metric(s) {unknown}; available: {list(ALL_METRICS)}")
        enabled = set(cfg.enabled)
        self.skipped: Dict[str, str] = {}
        self._reported: set = set()
        metrics: Dict[str, Metric] = {}

        # logged name of each enabled metric: `<name>_random` where its network is random (see METRIC_NETWORKS)
        self.keys: Dict[str, str] = {}
        if "lpips" in enabled:
            try:
                metrics[self._key("lpips", cfg.lpips.pretrained)] = LPIPS(cfg.lpips.net, cfg.lpips.pretrained,
                                                                          cfg.lpips.seed)
            except MissingWeightsError as err:
                self._skip("lpips", f"lpips skipped: {err}")
        if "st_lpips" in enabled:
            from mp_lightning.networks.st_lpips import st_lpips_unavailable_reason

            reason = st_lpips_unavailable_reason()
            if reason is None:
                metrics[self._key("st_lpips")] = STLPIPS(cfg.st_lpips.net)
            else:
                self._skip("st_lpips", reason)
        for name, cls in (("psnr", PSNR), ("ssim", SSIM), ("l1", L1)):
            if name in enabled:
                metrics[self._key(name)] = cls()
        if enabled & {"id_similarity", "aed"}:
            try:
                if embedder is None:
                    from mp_lightning.networks.identity import FaceEmbedder

                    embedder = FaceEmbedder(
                        pretrained=cfg.identity.pretrained, align=cfg.identity.align,
                        center_fraction=cfg.identity.center_fraction,
                    )
                real = not getattr(embedder, "kind", "").startswith("facenet-random")
                if "id_similarity" in enabled:
                    metrics[self._key("id_similarity", real)] = IdentitySimilarity(embedder)
                if "aed" in enabled:
                    metrics[self._key("aed", real)] = AED(embedder)
            except MissingWeightsError as err:
                for name in enabled & {"id_similarity", "aed"}:
                    self._skip(name, f"{name} skipped: {err}")
        object.__setattr__(self, "_embedder", embedder)  # shared with the identity metrics, outside the tree
        arcface_wanted = enabled & {"id_similarity_arcface", "aed_arcface"}
        arcface_embedder = None
        if arcface_wanted:
            try:
                from mp_lightning.networks.arcface import ArcFaceEmbedder

                arcface_embedder = ArcFaceEmbedder(center_fraction=cfg.identity.center_fraction)
                if "id_similarity_arcface" in enabled:
                    metrics[self._key("id_similarity_arcface")] = IdentitySimilarity(arcface_embedder)
                if "aed_arcface" in enabled:
                    metrics[self._key("aed_arcface")] = AED(arcface_embedder)
            except MissingWeightsError as err:
                for name in arcface_wanted:
                    self._skip(name, f"{name} skipped: {err}")
        object.__setattr__(self, "_arcface_embedder", arcface_embedder)
        dlib_wanted = enabled & {"id_similarity_dlib", "aed_dlib"}
        dlib_embedder = None
        if dlib_wanted:
            from mp_lightning.networks.dlib_face import DlibFaceEmbedder, dlib_unavailable_reason

            reason = dlib_unavailable_reason()
            if reason is None:
                dlib_embedder = DlibFaceEmbedder(cfg.dlib.detect_size, cfg.dlib.upsample)
                if "id_similarity_dlib" in enabled:
                    metrics[self._key("id_similarity_dlib")] = IdentitySimilarity(dlib_embedder)
                if "aed_dlib" in enabled:
                    metrics[self._key("aed_dlib")] = AED(dlib_embedder)
                metrics["dlib_no_face"] = MissedFaces()
            else:
                for name in dlib_wanted:
                    self._skip(name, reason)
        object.__setattr__(self, "_dlib_embedder", dlib_embedder)
        if "akd" in enabled:
            detect_target, reason = False, None
            if landmark_detector is None and cfg.akd.detector == MEDIAPIPE:
                reason = mediapipe_unavailable_reason()
                if reason is None:
                    landmark_detector, detect_target = MediaPipeKeypoints(), True
            elif landmark_detector is None and cfg.akd.detector:
                landmark_detector = _load_factory(cfg.akd.detector)()
            if reason:
                self._skip("akd", reason)
            else:
                metrics["akd"] = AKD(landmark_detector, cfg.akd.image_size, detect_target=detect_target)
                if detect_target:
                    metrics["akd_no_face"] = MissedFaces()
        if "warp_error" in enabled:
            metrics["warp_error"] = TemporalWarpingError(cfg.warp.flow_source, cfg.warp.occlusion_check)
        if cfg.fid:
            reason = fid_unavailable_reason()
            if reason is None:
                try:
                    metrics["fid"] = build_fid()
                except Exception as err:  # torch-fidelity's own loading errors vary by version
                    reason = f"FID skipped: {type(err).__name__}: {err}"
            if reason is not None:
                self.skipped["fid"] = reason
        self.metrics = nn.ModuleDict(metrics)

    # ---------------------------------------------------------------------------------------- update
    def _key(self, name: str, real_weights: bool = True) -> str:
        self.keys[name] = name if real_weights else f"{name}_random"
        return self.keys[name]

    def _metric(self, name: str) -> Optional[Metric]:
        """The metric enabled as `name` (whatever it is logged as), or None."""
        key = self.keys.get(name)
        return self.metrics[key] if key is not None else None

    def _skip(self, name: str, reason: str) -> None:
        self.skipped.setdefault(name, reason)

    def new_skip_reasons(self) -> Dict[str, str]:
        """Skip reasons not returned before: log these once."""
        new = {k: v for k, v in self.skipped.items() if k not in self._reported}
        self._reported.update(new)
        return new

    @torch.no_grad()
    def update(self, outputs: Mapping[str, Any], batch: Mapping[str, Any],
               reference_available: Optional[bool] = None) -> None:
        if reference_available is None:
            reference_available = self.reference_available
        if reference_available is None:
            reference_available = not is_cross_identity(batch)
        pred = outputs["prediction"].detach().float().clamp(0, 1)
        clip = pred.ndim == 5
        if clip:
            b, t = pred.shape[:2]
            target = batch.get("frames")
            target_landmarks = batch.get("frames_landmarks")
            flat = lambda x: None if x is None else x.flatten(0, 1)  # noqa: E731
            frames, gt, gt_landmarks = flat(pred), flat(target), flat(target_landmarks)
            pred_landmarks = flat(outputs.get("prediction_landmarks"))
            source = batch["source"][:, None].expand(b, t, *batch["source"].shape[1:]).flatten(0, 1)
        else:
            target = batch.get("driving")
            frames, gt, gt_landmarks = pred, target, batch.get("driving_landmarks")
            pred_landmarks = outputs.get("prediction_landmarks")
            source = batch["source"]
        if gt is not None:
            gt = gt.float()
        source = source.float()
        m = self.metrics

        if reference_available:
            if gt is None:
                raise ValueError("MetricSuite: the batch has no ground truth ('driving' / 'frames'); "
                                 "pass reference_available=False for cross-identity batches")
            for name in ("lpips", "st_lpips", "psnr", "ssim", "l1"):
                if self._metric(name) is not None:
                    self._metric(name).update(frames, gt)
            if "warp_error" in m and clip:  # still images have no temporal error: silently not applicable
                m["warp_error"].update(pred, target=target.float(), landmarks=target_landmarks)

        for embed, sim, dist in ((self._embedder, "id_similarity", "aed"),
                                 (self._arcface_embedder, "id_similarity_arcface", "aed_arcface"),
                                 (self._dlib_embedder, "id_similarity_dlib", "aed_dlib")):
            sim, dist = self._metric(sim), self._metric(dist)
            if sim is None and dist is None:
                continue
            # embedders return a tensor (FaceNet, ArcFace) or (descriptors, found) (dlib: a frame may have no face)
            with_found = lambda out: out if isinstance(out, tuple) else (out, None)  # noqa: E731
            pred_emb, pred_found = with_found(embed(frames))
            if source.shape[0] > 1 and source.stride(0) == 0:
                # one source expanded over every frame (personalization, clips): embedded once
                src_emb, src_found = with_found(embed(source[:1]))
                src_emb = src_emb.expand(source.shape[0], *src_emb.shape[1:])
                src_found = None if src_found is None else src_found.expand(source.shape[0])
            else:
                src_emb, src_found = with_found(embed(source))
            if pred_found is not None:
                m["dlib_no_face"].update(pred_found)
            if sim is not None:
                sim.update(pred_emb, src_emb, pred_found, src_found)
            if dist is not None:
                # FOMM: against the ground-truth frame; without one, against the source
                ref_emb, ref_found = with_found(embed(gt)) if reference_available else (src_emb, src_found)
                dist.update(pred_emb, ref_emb, pred_found, ref_found)

        # a stage's own landmarks are of the data's landmark set: compared with the data's; else the detector on both
        if "akd" in m and m["akd"].detect_target and pred_landmarks is None:
            # the detector runs on both images: a reconstruction measure, for pairs with a ground-truth frame
            if reference_available:
                found = m["akd"].update_detected(frames, gt)
                m["akd_no_face"].update(found)
        elif "akd" in m:
            if gt_landmarks is None:
                self._skip("akd", "AKD skipped: the batch has no driving landmarks")
            elif pred_landmarks is None and m["akd"].detector is None:
                self._skip("akd", "AKD skipped: no landmark detector (metrics.akd.detector) and the stage "
                                  "outputs no 'prediction_landmarks'")
            else:
                m["akd"].update(gt_landmarks.float(), pred_landmarks, preds=frames)

        if "fid" in m:
            m["fid"].update(gt if reference_available else source, real=True)
            m["fid"].update(frames, real=False)

    # --------------------------------------------------------------------------------------- compute
    def compute(self) -> Dict[str, float]:
        results: Dict[str, float] = {}
        with warnings.catch_warnings():
            # every rank computes every metric (the DDP sync is collective), updated or not
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            for name, metric in self.metrics.items():
                try:
                    value = float(metric.compute())
                except (RuntimeError, ValueError) as err:  # e.g. FID with fewer than 2 samples
                    self._skip(name, f"{name} not computed: {err}")
                    continue
                if not math.isnan(value):
                    results[name] = value
        return results

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def forward(self, *args: Any, **kwargs: Any) -> None:  # nn.Module requires one; update is the API
        raise TypeError("MetricSuite: call update(outputs, batch) and compute()")
