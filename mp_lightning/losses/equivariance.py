"""Random thin-plate-spline transforms and FOMM's equivariance losses (paper Sec. 3.4, BASELINES.md 1.5).

A `RandomTPS` is a per-sample map T: [-1, 1]^2 -> R^2 (coordinates (x, y)),
    T(z) = A z + t + sum_j w_j U(|z - c_j|_1),   U(r) = r^2 log(r + 1e-6),
with A = I + N(0, sigma_affine), t = N(0, sigma_affine), control points c_j on a points_tps x points_tps
grid in [-1, 1] and weights w_j ~ N(0, sigma_tps). The L1 distance inside U is the official
definition (FOMM's `Transform`), kept so that the vox-256 sigmas mean the same deformation strength.

Why not kornia's TPS: `kornia.geometry.transform.warp_image_tps` fits a Euclidean-kernel TPS to point
correspondences; FOMM samples the spline weights directly and needs its analytic jacobian at
arbitrary points. The grids and the warp come from our shared blocks instead.

`T.warp_image(x)` returns x sampled at T(z), i.e. the "transformed frame" X' with X'(z) = X(T(z)); a
keypoint p' detected in X' therefore corresponds to T(p') in X. The losses check exactly that:
* value:    mean |kp_X - T(kp_X')|
* jacobian: mean |I - J_X^-1 (dT(kp_X') J_X')|
Both are zero when T is the identity and the detections agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from mp_lightning.networks.blocks import make_coordinate_grid

KPDict = Dict[str, torch.Tensor]

_EPS = 1e-6


@dataclass
class TransformParams:
    """Official vox-256 `train_params.transform_params`."""

    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5


class RandomTPS:
    """A batch of random affine + TPS transforms (one per sample); see the module docstring.

    theta (B, 2, 3) affine part [A | t]; control_points (P, 2); control_params (B, P) spline weights
    (None = affine only).
    """

    def __init__(
        self,
        theta: torch.Tensor,
        control_points: Optional[torch.Tensor] = None,
        control_params: Optional[torch.Tensor] = None,
    ):
        self.theta = theta
        self.control_points = control_points
        self.control_params = control_params
        self.bs = theta.shape[0]

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def sample(
        cls,
        batch: int,
        sigma_affine: float = 0.05,
        sigma_tps: float = 0.005,
        points_tps: int = 5,
        device=None,
        dtype: torch.dtype = torch.float32,
        generator: Optional[torch.Generator] = None,
    ) -> "RandomTPS":
        """Random transforms with the official distribution; `points_tps=0` or `sigma_tps=0` = affine only."""
        noise = torch.randn(batch, 2, 3, generator=generator, dtype=dtype) * sigma_affine
        theta = noise + torch.eye(2, 3, dtype=dtype).unsqueeze(0)
        cp = params = None
        if points_tps > 0 and sigma_tps > 0:
            cp = make_coordinate_grid((points_tps, points_tps), dtype=dtype).view(-1, 2)
            params = torch.randn(batch, points_tps ** 2, generator=generator, dtype=dtype) * sigma_tps
        tps = cls(theta, cp, params)
        # drawn on the CPU (the official random stream); the copy to a GPU must not block the host, as a
        # plain `.to("cuda")` of pageable memory does (it synchronises the stream every training step)
        return tps.to(device, non_blocking=True) if device is not None else tps

    @classmethod
    def from_params(cls, batch: int, params: TransformParams, **kwargs) -> "RandomTPS":
        return cls.sample(batch, params.sigma_affine, params.sigma_tps, params.points_tps, **kwargs)

    @classmethod
    def identity(cls, batch: int, device=None, dtype: torch.dtype = torch.float32) -> "RandomTPS":
        theta = torch.eye(2, 3, dtype=dtype, device=device).unsqueeze(0).repeat(batch, 1, 1)
        return cls(theta)

    def to(self, device=None, dtype: Optional[torch.dtype] = None, non_blocking: bool = False) -> "RandomTPS":
        """`non_blocking` copies CPU tensors to a CUDA device through pinned memory, without a host sync."""
        pin = non_blocking and device is not None and torch.device(device).type == "cuda"

        def mv(t):
            if t is None:
                return None
            if pin and t.device.type == "cpu":
                t = t.pin_memory()
            return t.to(device=device, dtype=dtype or t.dtype, non_blocking=non_blocking)

        return RandomTPS(mv(self.theta), mv(self.control_points), mv(self.control_params))

    # --- evaluation ---------------------------------------------------------------------------------
    def _tps_terms(self, coords: torch.Tensor):
        """For coords (B, N, 2): signed differences (B, N, P, 2) and L1 distances (B, N, P) to the controls."""
        cp = self.control_points.to(coords)
        diff = coords.unsqueeze(2) - cp.view(1, 1, -1, 2)
        return diff, diff.abs().sum(-1)

    def warp_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """T(coords): (B, N, 2) -> (B, N, 2), (x, y) in [-1, 1] space."""
        theta = self.theta.to(coords)
        out = torch.einsum("bij,bnj->bni", theta[:, :, :2], coords) + theta[:, :, 2].unsqueeze(1)
        if self.control_params is not None:
            _, r = self._tps_terms(coords)
            u = r ** 2 * torch.log(r + _EPS)
            out = out + (u * self.control_params.to(coords).unsqueeze(1)).sum(-1, keepdim=True)
        return out

    def jacobian(self, coords: torch.Tensor) -> torch.Tensor:
        """dT/dz at coords (B, N, 2) -> (B, N, 2, 2), rows = output (x, y), columns = input (x, y).

        Analytic (no autograd needed): dU/dr = 2 r log(r + eps) + r^2 / (r + eps), dr/dz = sign(z - c).
        The TPS term adds the same value to both output coordinates, so both rows get the same gradient.
        """
        theta = self.theta.to(coords)
        jac = theta[:, :, :2].unsqueeze(1).expand(coords.shape[0], coords.shape[1], 2, 2)
        if self.control_params is not None:
            diff, r = self._tps_terms(coords)
            du = 2 * r * torch.log(r + _EPS) + r ** 2 / (r + _EPS)
            grad = ((du * self.control_params.to(coords).unsqueeze(1)).unsqueeze(-1) * torch.sign(diff)).sum(2)
            jac = jac + grad.unsqueeze(2)  # (B, N, 1, 2) broadcast over both output rows
        return jac

    def sampling_grid(self, spatial_size, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, H, W, 2) grid of T(z) over the image's coordinate grid."""
        h, w = int(spatial_size[0]), int(spatial_size[1])
        grid = make_coordinate_grid((h, w), dtype=dtype, device=device).view(1, h * w, 2)
        return self.warp_coordinates(grid.expand(self.bs, h * w, 2)).view(self.bs, h, w, 2)

    def warp_image(self, image: torch.Tensor, align_corners: bool = True, padding_mode: str = "reflection") -> torch.Tensor:
        """X'(z) = X(T(z)) for image (B, C, H, W); reflection padding as in the official training."""
        grid = self.sampling_grid(image.shape[2:], device=image.device, dtype=image.dtype)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)

    def warp_keypoints(self, kp: KPDict) -> KPDict:
        """Map keypoints of the transformed frame back to the original: value T(p), jacobian dT(p) J."""
        out = {"value": self.warp_coordinates(kp["value"])}
        if kp.get("jacobian") is not None:
            out["jacobian"] = torch.matmul(self.jacobian(kp["value"]), kp["jacobian"])
        return out


# ----------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------
def equivariance_value_loss(kp_driving: KPDict, kp_transformed: KPDict, transform: RandomTPS) -> torch.Tensor:
    """mean |kp_driving - T(kp_transformed)| (scalar, unweighted). kp_transformed: detections on T's frame."""
    return (kp_driving["value"] - transform.warp_coordinates(kp_transformed["value"])).abs().mean()


def equivariance_jacobian_loss(kp_driving: KPDict, kp_transformed: KPDict, transform: RandomTPS) -> torch.Tensor:
    """mean |I - J_drv^-1 (dT(p') J')| (scalar, unweighted); the official form, which avoids matching
    jacobians of very different magnitudes directly."""
    jt = torch.matmul(transform.jacobian(kp_transformed["value"]), kp_transformed["jacobian"])
    # linalg.inv_ex: the same kernel as torch.inverse without its singularity check, which reads the
    # status back to the host (a device sync every training step); a singular jacobian now gives inf/nan
    value = torch.matmul(torch.linalg.inv_ex(kp_driving["jacobian"]).inverse, jt)
    eye = torch.eye(2, dtype=value.dtype, device=value.device)
    return (eye - value).abs().mean()


def equivariance_losses(
    kp_detector,
    driving: torch.Tensor,
    kp_driving: KPDict,
    transform: Optional[RandomTPS] = None,
    params: Optional[TransformParams] = None,
    value_weight: float = 10.0,
    jacobian_weight: float = 10.0,
    align_corners: bool = True,
) -> Dict[str, torch.Tensor]:
    """The weighted training terms: warp `driving` (B, C, H, W) in [0, 1] by `transform` (a fresh random
    one from `params` if None), detect keypoints on it, compare with `kp_driving`.

    Returns {"equivariance_value", "equivariance_jacobian" (if the detector has jacobians),
    "transformed_frame", "transformed_kp"} (losses already multiplied by their weights; a weight of 0
    skips the term). `align_corners` should match the networks' grid_sample convention.
    """
    if transform is None:
        transform = RandomTPS.from_params(
            driving.shape[0], params or TransformParams(), device=driving.device, dtype=driving.dtype
        )
    frame = transform.warp_image(driving, align_corners=align_corners)
    kp_t = kp_detector(frame)
    out: Dict[str, torch.Tensor] = {"transformed_frame": frame, "transformed_kp": kp_t}
    if value_weight:
        out["equivariance_value"] = value_weight * equivariance_value_loss(kp_driving, kp_t, transform)
    if jacobian_weight and kp_t.get("jacobian") is not None and kp_driving.get("jacobian") is not None:
        out["equivariance_jacobian"] = jacobian_weight * equivariance_jacobian_loss(kp_driving, kp_t, transform)
    return out
