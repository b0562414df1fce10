"""Talking-head evaluation metrics as torchmetrics `Metric`s, and the `MetricSuite` every stage reports.

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
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from mp_lightning.batch import is_cross_identity
from mp_lightning.errors import ConfigError, MissingWeightsError

__all__ = [
    "AED",
    "AKD",
    "L1",
    "LPIPS",
    "PSNR",
    "SSIM",
    "IdentitySimilarity",
    "MetricSuite",
    "MetricsConfig",
    "TemporalWarpingError",
    "fid_unavailable_reason",
    "farneback_flow",
]

LandmarkDetector = Callable[[Tensor], Tensor]  # (B, 3, H, W) in [0, 1] -> (B, K, 2) in [0, 1]


# ------------------------------------------------------------------------------------------ base classes
class _MeanMetric(Metric):
    """Mean of per-sample values: float64 `total` and `count`, both summed across ranks."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._frozen: List[nn.Module] = []

    def _accumulate(self, values: Tensor) -> None:
        values = values.detach().reshape(-1).to(self.total.device, torch.float64)
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        """Mean over every sample seen by every rank; NaN when there was none."""
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        return self.total / self.count

    def _hold_frozen(self, attr: str, net: Any) -> None:
        # a plain attribute, not a submodule: pretrained weights stay out of the state dict of whatever holds
        # the metric (a LightningModule's checkpoint), and one net can be shared by several metrics
        object.__setattr__(self, attr, net)
        if isinstance(net, nn.Module):
            self._frozen.append(net)

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any):
        # frozen nets follow device moves but not dtype casts (inputs are evaluated in float32); a probe
        # tensor tells which of the two `fn` does, whatever `.to` / `.cuda` / `.half` produced it
        probe = fn(torch.zeros(1))
        if isinstance(probe, Tensor):
            for net in self._frozen:
                net.to(probe.device)
        return super()._apply(fn, *args, **kwargs)


def _check_images(name: str, preds: Tensor, target: Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 4 or preds.shape[1] != 3:
        raise ValueError(
            f"{name}: expects preds and target of the same shape (B, 3, H, W), got {tuple(preds.shape)} "
            f"and {tuple(target.shape)}"
        )


# --------------------------------------------------------------------------------------- pixel metrics
class PSNR(_MeanMetric):
    """Mean over images of the per-image PSNR with data range 1.

    update(preds, target): (B, 3, H, W) in [0, 1]. Identical images give +inf (as torchmetrics does).
    Note: torchmetrics' `PeakSignalNoiseRatio()` without `dim` is the PSNR of the pooled MSE instead.
    """

    higher_is_better = True

    def update(self, preds: Tensor, target: Tensor) -> None:
        from torchmetrics.functional.image import peak_signal_noise_ratio

        _check_images("PSNR", preds, target)
        values = peak_signal_noise_ratio(
            preds.float(), target.float(), data_range=1.0, reduction="none", dim=(1, 2, 3)
        )
        self._accumulate(values)


class SSIM(_MeanMetric):
    """Mean per-image SSIM (torchmetrics functional: Gaussian kernel 11, sigma 1.5, data range 1).

    update(preds, target): (B, 3, H, W) in [0, 1], H and W >= 11.
    """

    higher_is_better = True

    def update(self, preds: Tensor, target: Tensor) -> None:
        from torchmetrics.functional.image import structural_similarity_index_measure

        _check_images("SSIM", preds, target)
        values = structural_similarity_index_measure(preds.float(), target.float(), data_range=1.0, reduction="none")
        self._accumulate(values)


class L1(_MeanMetric):
    """Mean absolute error. update(preds, target): (B, 3, H, W) in [0, 1]."""

    higher_is_better = False

    def update(self, preds: Tensor, target: Tensor) -> None:
        _check_images("L1", preds, target)
        self._accumulate((preds.float() - target.float()).abs().flatten(1).mean(1))


# ------------------------------------------------------------------------------------------------ LPIPS
_LPIPS_BACKBONE_WEIGHTS = {"alex": "alexnet", "vgg": "vgg16"}


def build_lpips_net(net: str = "alex", pretrained: bool = True, seed: int = 0) -> nn.Module:
    """`lpips.LPIPS` with its calibrated linear layers (they ship in the wheel).

    pretrained=True needs torchvision's ImageNet trunk (`mp_lightning.io.weights.require("alexnet"/"vgg16")`,
    a `MissingWeightsError` when absent). pretrained=False uses a random trunk seeded with `seed`, so the
    values are reproducible but are *not* LPIPS: for offline tests and smoke runs only.
    """
    import lpips

    if net not in _LPIPS_BACKBONE_WEIGHTS:
        raise ConfigError(f"metrics.lpips.net must be one of {sorted(_LPIPS_BACKBONE_WEIGHTS)}, got {net!r}")
    with warnings.catch_warnings():
        # lpips still calls torchvision with the deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        if pretrained:
            from mp_lightning.io.weights import require

            require(_LPIPS_BACKBONE_WEIGHTS[net])
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    model.requires_grad_(False)
    return model.eval()


class LPIPS(_MeanMetric):
    """Mean LPIPS distance (lpips package; images in [0, 1] are mapped to [-1, 1] as it expects).

    Args: net "alex" (default, the published metric) or "vgg"; pretrained (see `build_lpips_net`); seed.
    update(preds, target): (B, 3, H, W) in [0, 1].
    """

    higher_is_better = False

    def __init__(self, net: str = "alex", pretrained: bool = True, seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.net_name = net
        self._hold_frozen("net", build_lpips_net(net, pretrained, seed))

    def update(self, preds: Tensor, target: Tensor) -> None:
        _check_images("LPIPS", preds, target)
        with torch.no_grad():
            values = self.net(preds.float() * 2 - 1, target.float() * 2 - 1)
        self._accumulate(values)


# ---------------------------------------------------------------------------------------------- identity
class _EmbeddingMetric(_MeanMetric):
    """Base of identity metrics: `update(preds, target)` takes images (B, 3, H, W) in [0, 1] (embedded
    with the FaceEmbedder) or precomputed embeddings (B, D) from that same embedder."""

    def __init__(self, embedder: Optional[nn.Module] = None, pretrained: bool = True, align: str = "center",
                 **kwargs: Any):
        super().__init__(**kwargs)
        if embedder is None:
            from mp_lightning.networks.identity import FaceEmbedder

            embedder = FaceEmbedder(pretrained=pretrained, align=align)
        self._hold_frozen("embedder", embedder)

    def _embed(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            return x.float()
        with torch.no_grad():
            return self.embedder(x.float())

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape[0] != target.shape[0]:
            raise ValueError(f"{type(self).__name__}: batch sizes differ, {preds.shape[0]} vs {target.shape[0]}")
        self._accumulate(self._score(self._embed(preds), self._embed(target)))

    def _score(self, a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError


class IdentitySimilarity(_EmbeddingMetric):
    """Mean cosine similarity of identity embeddings (prediction vs source), in [-1, 1]."""

    higher_is_better = True

    def _score(self, a: Tensor, b: Tensor) -> Tensor:
        return F.cosine_similarity(a, b, dim=-1)


class AED(_EmbeddingMetric):
    """Average Euclidean distance of identity embeddings (FOMM's AED; embeddings are unit-norm, so in [0, 2])."""

    higher_is_better = False

    def _score(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).norm(dim=-1)


# ------------------------------------------------------------------------------------------------- AKD
class AKD(_MeanMetric):
    """Average keypoint distance: mean Euclidean distance in pixels between the landmarks of the
    prediction and those of the driving frame.

    Landmarks are (B, K, 2) in [0, 1] of the frame (x right, y down), as in the data contract. The
    prediction's landmarks come from one of:
      - `pred_landmarks` passed to `update` (a stage that outputs them, e.g. `prediction_landmarks`, or
        landmarks precomputed offline with whatever produced the data's landmarks);
      - the `detector` callable given here, (B, 3, H, W) in [0, 1] -> (B, K, 2) in [0, 1], run on `preds`.
    `target_landmarks` are the driving frame's landmarks from the same source as the data's.
    Points with a non-finite coordinate in either set (a missed detection) are left out.

    Args:
        detector: optional landmark detector for predictions.
        image_size: report pixels at this side length (FOMM reports at 256); None = the image's own size.

    update(target_landmarks, pred_landmarks=None, preds=None, image_size=None): image_size (H, W) is
    needed only when neither `preds` nor the constructor's image_size gives the pixel scale.
    """

    higher_is_better = False

    def __init__(self, detector: Optional[LandmarkDetector] = None, image_size: Optional[int] = None,
                 detect_target: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self._hold_frozen("detector", detector)
        self.image_size = image_size
        self.detect_target = detect_target  # the detector also finds the target's landmarks (`update_detected`)

    def update_detected(self, preds: Tensor, targets: Tensor) -> Tensor:
        """The detector on both the predictions and the ground-truth frames (B, 3, H, W); returns (B,) bool:
        a face found in both (pairs without are left out of the mean and counted by the caller)."""
        with torch.no_grad():
            pred_landmarks = self.detector(preds.float())
            target_landmarks = self.detector(targets.float())
        found = pred_landmarks.flatten(1).isfinite().all(1) & target_landmarks.flatten(1).isfinite().all(1)
        if bool(found.any()):
            self.update(target_landmarks[found], pred_landmarks[found], preds=preds[found])
        return found.to(self.total.device)

    def update(
        self,
        target_landmarks: Tensor,
        pred_landmarks: Optional[Tensor] = None,
        preds: Optional[Tensor] = None,
        image_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        if pred_landmarks is None:
            if self.detector is None or preds is None:
                raise ValueError("AKD: pass pred_landmarks, or construct with a detector and pass preds")
            with torch.no_grad():
                pred_landmarks = self.detector(preds.float())
        if pred_landmarks.shape != target_landmarks.shape or pred_landmarks.shape[-1] != 2:
            raise ValueError(
                f"AKD: landmarks must both be (B, K, 2), got {tuple(pred_landmarks.shape)} and "
                f"{tuple(target_landmarks.shape)}"
            )
        if self.image_size is not None:
            h = w = self.image_size
        elif preds is not None:
            h, w = preds.shape[-2:]
        elif image_size is not None:
            h, w = image_size
        else:
            raise ValueError("AKD: the pixel scale is unknown: pass preds or image_size, or set AKD(image_size=...)")
        scale = torch.tensor([w, h], dtype=torch.float64, device=target_landmarks.device)
        diff = (pred_landmarks.double() - target_landmarks.double()) * scale
        dist = diff.norm(dim=-1)
        self._accumulate(dist[torch.isfinite(dist)])


# ---------------------------------------------------------------------------------- temporal warp error
def farneback_flow(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """OpenCV Farneback flow between two uint8 grey images (H, W) -> (H, W, 2) float32 pixels (dx, dy),
    such that prev(y, x) ~ nxt(y + dy, x + dx)."""
    import cv2

    return cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _grey_uint8(frames: Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W) uint8 luma (BT.601)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=frames.device).view(1, 3, 1, 1)
    grey = (frames.float().clamp(0, 1) * weights).sum(1) * 255.0
    return grey.round().to(torch.uint8).cpu().numpy()


def _sample(image: Tensor, flow: Tensor) -> Tuple[Tensor, Tensor]:
    """image (N, C, H, W) sampled at p + flow(p); flow (N, H, W, 2) in pixels. Returns the warped image and
    a (N, 1, H, W) mask of points that stay inside the frame."""
    n, _, h, w = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=image.device),
        torch.arange(w, dtype=torch.float32, device=image.device),
        indexing="ij",
    )
    x = xs + flow[..., 0]
    y = ys + flow[..., 1]
    inside = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).unsqueeze(1).float()
    # pixel centres at integer coordinates <-> align_corners=True
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped, inside


def _landmark_flow(src: Tensor, dst: Tensor, h: int, w: int) -> Tensor:
    """Dense flow (H, W, 2) in pixels interpolated from sparse landmark motion src -> dst ((K, 2) in [0, 1])
    by inverse-squared-distance weighting (smooth, exact at the landmarks up to the +1 regulariser)."""
    scale = torch.tensor([w, h], dtype=torch.float32, device=src.device)
    p_src, p_dst = src.float() * scale, dst.float() * scale
    ok = torch.isfinite(p_src).all(-1) & torch.isfinite(p_dst).all(-1)
    p_src, motion = p_src[ok], (p_dst - p_src)[ok]
    if p_src.shape[0] == 0:
        return torch.zeros(h, w, 2, device=src.device)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=src.device),
        torch.arange(w, dtype=torch.float32, device=src.device),
        indexing="ij",
    )
    pix = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
    weight = 1.0 / ((pix - p_src[None]).pow(2).sum(-1) + 1.0)
    flow = (weight[..., None] * motion[None]).sum(1) / weight.sum(1, keepdim=True)
    return flow.reshape(h, w, 2)


class TemporalWarpingError(_MeanMetric):
    """Temporal warping error of predicted clips: for each pair of consecutive frames, warp predicted
    frame t+1 back to t with the optical flow t -> t+1 and take the mean absolute difference to predicted
    frame t over non-occluded pixels inside the frame; the metric is the mean over frame pairs (in [0, 1]
    units). A temporally consistent clip scores ~0; flicker raises it.

    Args:
        flow_source: where the flow t -> t+1 comes from:
            "target"     - OpenCV Farneback on the ground-truth frames (default; needs `target`),
            "prediction" - Farneback on the predicted frames themselves,
            "landmarks"  - dense flow interpolated from landmark motion (needs `landmarks`; no occlusion mask).
        occlusion_check: mask pixels that fail the forward-backward flow consistency test (Sundaram et al.
            2010, as in Lai et al. 2018's warping error); only for Farneback flows.

    update(preds, target=None, landmarks=None): preds and target (B, T, 3, H, W) in [0, 1], T >= 2;
    landmarks (B, T, K, 2) in [0, 1] of the frame.
    """

    higher_is_better = False

    def __init__(self, flow_source: str = "target", occlusion_check: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if flow_source not in ("target", "prediction", "landmarks"):
            raise ConfigError(
                f"metrics.warp.flow_source must be 'target', 'prediction' or 'landmarks', got {flow_source!r}"
            )
        self.flow_source = flow_source
        self.occlusion_check = occlusion_check

    def _pair_flows(self, frames: Tensor) -> Tuple[Tensor, Tensor]:
        """frames (T, 3, H, W) -> forward flows t->t+1 and backward flows t+1->t, each (T-1, H, W, 2)."""
        grey = _grey_uint8(frames)
        fwd = [farneback_flow(grey[t], grey[t + 1]) for t in range(len(grey) - 1)]
        bwd = [farneback_flow(grey[t + 1], grey[t]) for t in range(len(grey) - 1)] if self.occlusion_check else None
        to = lambda flows: torch.from_numpy(np.stack(flows)).to(frames.device)  # noqa: E731
        return to(fwd), (to(bwd) if bwd is not None else None)

    def update(self, preds: Tensor, target: Optional[Tensor] = None, landmarks: Optional[Tensor] = None) -> None:
        if preds.ndim != 5 or preds.shape[2] != 3 or preds.shape[1] < 2:
            raise ValueError(f"TemporalWarpingError: preds must be (B, T>=2, 3, H, W), got {tuple(preds.shape)}")
        b, t, _, h, w = preds.shape
        preds = preds.detach().float()
        for i in range(b):
            bwd = None
            if self.flow_source == "landmarks":
                if landmarks is None:
                    raise ValueError("TemporalWarpingError(flow_source='landmarks'): pass landmarks (B, T, K, 2)")
                fwd = torch.stack([_landmark_flow(landmarks[i, s], landmarks[i, s + 1], h, w) for s in range(t - 1)])
            elif self.flow_source == "prediction":
                fwd, bwd = self._pair_flows(preds[i])
            else:
                if target is None or target.shape != preds.shape:
                    raise ValueError(
                        "TemporalWarpingError(flow_source='target'): pass the ground-truth clip of the same shape "
                        f"as preds {tuple(preds.shape)}, got {None if target is None else tuple(target.shape)}"
                    )
                fwd, bwd = self._pair_flows(target[i])
            fwd = fwd.to(preds.device).float()
            warped, mask = _sample(preds[i, 1:], fwd)
            if bwd is not None:
                bwd_at, _ = _sample(bwd.to(preds.device).float().permute(0, 3, 1, 2), fwd)
                bwd_at = bwd_at.permute(0, 2, 3, 1)
                mismatch = (fwd + bwd_at).pow(2).sum(-1)
                bound = 0.01 * (fwd.pow(2).sum(-1) + bwd_at.pow(2).sum(-1)) + 0.5
                mask = mask * (mismatch < bound).unsqueeze(1).float()
            err = ((preds[i, :-1] - warped).abs() * mask).sum(dim=(1, 2, 3))
            valid = mask.sum(dim=(1, 2, 3)) * 3
            keep = valid > 0
            self._accumulate(err[keep] / valid[keep])


# -------------------------------------------------------------------------------------------------- FID
def fid_unavailable_reason() -> Optional[str]:
    """Why torchmetrics' FID cannot run here (None when it can)."""
    try:
        importlib.import_module("torch_fidelity")
    except ImportError:
        return "FID skipped: torch-fidelity is not installed (`pip install torch-fidelity`)"
    from mp_lightning.io.weights import require

    try:
        require("inception_fid")
    except MissingWeightsError as err:
        return f"FID skipped: {err}"
    return None


def _build_fid() -> Metric:
    from torchmetrics.image.fid import FrechetInceptionDistance

    # normalize=True: images arrive as floats in [0, 1]
    return FrechetInceptionDistance(feature=2048, normalize=True)


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
                from mp_lightning.metrics.st_lpips import STLPIPS

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
                from mp_lightning.metrics.dlib_identity import DlibAED, DlibIdentitySimilarity, MissedFaces

                dlib_embedder = DlibFaceEmbedder(cfg.dlib.detect_size, cfg.dlib.upsample)
                if "id_similarity_dlib" in enabled:
                    metrics[self._key("id_similarity_dlib")] = DlibIdentitySimilarity()
                if "aed_dlib" in enabled:
                    metrics[self._key("aed_dlib")] = DlibAED()
                metrics["dlib_no_face"] = MissedFaces()
            else:
                for name in dlib_wanted:
                    self._skip(name, reason)
        object.__setattr__(self, "_dlib_embedder", dlib_embedder)
        if "akd" in enabled:
            from mp_lightning.metrics.akd_mediapipe import MEDIAPIPE, MediaPipeKeypoints, mediapipe_unavailable_reason

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
                    from mp_lightning.metrics.dlib_identity import MissedFaces

                    metrics["akd_no_face"] = MissedFaces()
        if "warp_error" in enabled:
            metrics["warp_error"] = TemporalWarpingError(cfg.warp.flow_source, cfg.warp.occlusion_check)
        if cfg.fid:
            reason = fid_unavailable_reason()
            if reason is None:
                try:
                    metrics["fid"] = _build_fid()
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
            # embedders return a tensor (FaceNet) or (descriptors, found) (dlib: a frame may have no face)
            as_args = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
            pred_emb = as_args(embed(frames))
            src_emb = as_args(embed(source))
            if embed is self._dlib_embedder:
                m["dlib_no_face"].update(pred_emb[1])
            if sim is not None:
                sim.update(*pred_emb, *src_emb)
            if dist is not None:
                # FOMM: against the ground-truth frame; without one, against the source
                ref_emb = as_args(embed(gt)) if reference_available else src_emb
                dist.update(*pred_emb, *ref_emb)

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
