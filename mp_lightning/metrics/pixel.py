"""Pixel metrics against the ground truth: PSNR, SSIM, L1 (the one PSNR definition of the framework)."""
from __future__ import annotations

from torch import Tensor

from mp_lightning.metrics.base import MeanMetric, check_images


class PSNR(MeanMetric):
    """Mean over images of the per-image PSNR with data range 1.

    update(preds, target): (B, 3, H, W) in [0, 1]. Identical images give +inf (as torchmetrics does).
    Note: torchmetrics' `PeakSignalNoiseRatio()` without `dim` is the PSNR of the pooled MSE instead.
    """

    higher_is_better = True

    def update(self, preds: Tensor, target: Tensor) -> None:
        from torchmetrics.functional.image import peak_signal_noise_ratio

        check_images("PSNR", preds, target)
        values = peak_signal_noise_ratio(
            preds.float(), target.float(), data_range=1.0, reduction="none", dim=(1, 2, 3)
        )
        self._accumulate(values)


class SSIM(MeanMetric):
    """Mean per-image SSIM (torchmetrics functional: Gaussian kernel 11, sigma 1.5, data range 1).

    update(preds, target): (B, 3, H, W) in [0, 1], H and W >= 11.
    """

    higher_is_better = True

    def update(self, preds: Tensor, target: Tensor) -> None:
        from torchmetrics.functional.image import structural_similarity_index_measure

        check_images("SSIM", preds, target)
        values = structural_similarity_index_measure(preds.float(), target.float(), data_range=1.0, reduction="none")
        self._accumulate(values)


class L1(MeanMetric):
    """Mean absolute error. update(preds, target): (B, 3, H, W) in [0, 1]."""

    higher_is_better = False

    def update(self, preds: Tensor, target: Tensor) -> None:
        check_images("L1", preds, target)
        self._accumulate((preds.float() - target.float()).abs().flatten(1).mean(1))
