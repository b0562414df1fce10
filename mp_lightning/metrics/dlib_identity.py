"""Identity metrics on dlib's 128-d face descriptors (network in `networks/dlib_face.py`).

A pair in which dlib finds no face (in the prediction or the reference) is left out of the mean and
counted by `MissedFaces`, which the suite reports as `dlib_no_face`: a melted face shows up there
instead of silently raising or lowering the similarity.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mp_lightning.metrics.suite import _MeanMetric


class _DlibPairMetric(_MeanMetric):
    """update(a, a_found, b, b_found): descriptors (B, 128) and found flags (B,) from `DlibFaceEmbedder`."""

    def update(self, a: Tensor, a_found: Tensor, b: Tensor, b_found: Tensor) -> None:
        keep = a_found & b_found
        self._accumulate(self._score(a[keep].float(), b[keep].float()))

    def _score(self, a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError


class DlibIdentitySimilarity(_DlibPairMetric):
    """Mean cosine similarity of dlib descriptors, prediction vs source, in [-1, 1]."""

    higher_is_better = True

    def _score(self, a: Tensor, b: Tensor) -> Tensor:
        return F.cosine_similarity(a, b, dim=-1)


class DlibAED(_DlibPairMetric):
    """Mean Euclidean distance of dlib descriptors (dlib calls < 0.6 the same person)."""

    higher_is_better = False

    def _score(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).norm(dim=-1)


class MissedFaces(_MeanMetric):
    """Number of images (summed over ranks) in which dlib found no face. update(found (B,) bool)."""

    higher_is_better = False

    def update(self, found: Tensor) -> None:
        self._accumulate((~found).double())

    def compute(self) -> Tensor:
        return self.total
