"""MetaPortrait's eye and mouth losses: a pyramid MSE inside landmark boxes, normalised by the batch's mask area."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from mp_lightning.losses.batch_statistics import mean_over_processes

Pyramid = Dict[str, torch.Tensor]


def masked_pyramid_mse(prediction: Pyramid, target: Pyramid, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Official eye/mouth loss: sum over pyramid scales of sum((p - t)^2 * m) / (sum(m) + eps).

    prediction, target: pyramids {"prediction_<scale>": (B, C, H_s, W_s)} (see `ImagePyramid`); mask
    (B, 1, H, W) 0/1, nearest-resized to each scale. The sums run over the whole batch and all channels;
    under DDP the mask area is that of the global batch (averaged over processes), so that N processes
    train what one process trains on their batches together (the official code normalises per GPU).
    """
    masks = {key: F.interpolate(mask.to(pred.dtype), size=pred.shape[2:], mode="nearest")
             for key, pred in prediction.items()}
    if not masks:
        return mask.new_zeros(())
    areas = mean_over_processes(torch.stack([m.sum() for m in masks.values()]).detach())
    return sum(((pred - target[key]) ** 2 * masks[key]).sum() / (area + eps)
               for (key, pred), area in zip(prediction.items(), areas))


def eye_loss(prediction: Pyramid, target: Pyramid, eye_mask: torch.Tensor) -> torch.Tensor:
    """Masked pyramid MSE inside the eye boxes (official weight 50)."""
    return masked_pyramid_mse(prediction, target, eye_mask)


def mouth_loss(prediction: Pyramid, target: Pyramid, mouth_mask: torch.Tensor) -> torch.Tensor:
    """Masked pyramid MSE inside the mouth box (official weight 50)."""
    return masked_pyramid_mse(prediction, target, mouth_mask)
