"""LSGAN generator and discriminator terms and feature matching, over the multi-scale discriminator's outputs
(FOMM and MetaPortrait alike)."""
from __future__ import annotations

from typing import Dict, List, Sequence, Union

import torch


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
