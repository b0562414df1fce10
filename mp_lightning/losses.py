"""MetaPortrait / FOMM loss terms that are not networks (official forms, NOTES 3.1).

All functions return unweighted scalars unless a `weights` argument says otherwise; the stage multiplies
by its configured loss weights (official: eye 50, mouth 50, generator_gan 1, discriminator_gan 1,
feature_matching [10, 10, 10, 10], identity 20 in the paper / off in the released code).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

Pyramid = Dict[str, torch.Tensor]


def masked_pyramid_mse(prediction: Pyramid, target: Pyramid, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Official eye/mouth loss: sum over pyramid scales of sum((p - t)^2 * m) / (sum(m) + eps).

    prediction, target: pyramids {"prediction_<scale>": (B, C, H_s, W_s)} (see `ImagePyramid`); mask
    (B, 1, H, W) 0/1, nearest-resized to each scale. The sums run over the whole batch and all channels;
    under DDP the mask area is that of the global batch (averaged over processes), so that N processes
    train what one process trains on their batches together (the official code normalises per GPU).
    """
    from mp_lightning.distributed import mean_over_processes

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


def _prediction_maps(d: Union[Dict, List, torch.Tensor]) -> List[torch.Tensor]:
    if isinstance(d, torch.Tensor):
        return [d]
    if isinstance(d, dict):
        return [v for k, v in d.items() if k.startswith("prediction_map_")]
    return list(d)


def lsgan_generator_loss(fake_scores) -> torch.Tensor:
    """LSGAN generator term: sum over scales of mean((1 - D(fake))^2).

    fake_scores: the `MultiScaleDiscriminator` output dict (its `prediction_map_*` entries), a list of
    score maps, or one tensor.
    """
    return sum(((1 - s) ** 2).mean() for s in _prediction_maps(fake_scores))


def lsgan_discriminator_loss(real_scores, fake_scores) -> torch.Tensor:
    """LSGAN discriminator term: sum over scales of mean((1 - D(real))^2 + D(fake)^2) (fake detached
    by the caller, as the official code feeds `prediction.detach()`)."""
    real, fake = _prediction_maps(real_scores), _prediction_maps(fake_scores)
    return sum(((1 - r) ** 2 + f ** 2).mean() for r, f in zip(real, fake))


def feature_matching_loss(real_out: Dict, fake_out: Dict, weights: Sequence[float] = (10, 10, 10, 10)) -> torch.Tensor:
    """Sum over scales and discriminator blocks of w_i * mean|D_i(real) - D_i(fake)| (official form; the real
    features are not detached, as in the official code, though D is not stepped by this loss)."""
    total = 0.0
    for key, real_maps in real_out.items():
        if not key.startswith("feature_maps_"):
            continue
        for w, a, b in zip(weights, real_maps, fake_out[key]):
            if w != 0:
                total = total + w * (a - b).abs().mean()
    if not isinstance(total, torch.Tensor):
        return torch.zeros(())
    return total


def identity_loss(embedding: torch.Tensor, target_embedding: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity between identity embeddings (B, D) and (B, D) (target detached)."""
    a = F.normalize(embedding, dim=1)
    b = F.normalize(target_embedding.detach(), dim=1)
    return 1 - (a * b).sum(1).mean()
