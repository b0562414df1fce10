"""Identity metrics on face embeddings: cosine similarity and Euclidean distance (FOMM's AED), for every
embedder alike (FaceNet in `networks/identity.py`, ArcFace in `networks/arcface.py`, dlib's ResNet in
`networks/dlib_face.py`).

An embedder that can miss a face (dlib) also returns found flags: a pair with a missing face is left out of the
mean, and the suite counts the misses (`dlib_no_face`), so a melted face shows up there instead of silently
raising or lowering the similarity.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mp_lightning.metrics.base import MeanMetric


class EmbeddingMetric(MeanMetric):
    """Mean score of pairs of identity embeddings.

    update(preds, target, preds_found=None, target_found=None): images (B, 3, H, W) in [0, 1] (embedded with
    the embedder; FaceNet when none is given) or embeddings (B, D) already made by it; found flags (B,) bool
    where the embedder reports them (pairs with a face missing on either side are left out).
    """

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

    def update(self, preds: Tensor, target: Tensor, preds_found: Optional[Tensor] = None,
               target_found: Optional[Tensor] = None) -> None:
        if preds.shape[0] != target.shape[0]:
            raise ValueError(f"{type(self).__name__}: batch sizes differ, {preds.shape[0]} vs {target.shape[0]}")
        a, b = self._embed(preds), self._embed(target)
        if preds_found is not None or target_found is not None:
            keep = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
            for found in (preds_found, target_found):
                if found is not None:
                    keep &= found.to(a.device)
            a, b = a[keep], b[keep]
        self._accumulate(self._score(a, b))

    def _score(self, a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError


class IdentitySimilarity(EmbeddingMetric):
    """Mean cosine similarity of identity embeddings (prediction vs source), in [-1, 1]."""

    higher_is_better = True

    def _score(self, a: Tensor, b: Tensor) -> Tensor:
        return F.cosine_similarity(a, b, dim=-1)


class AED(EmbeddingMetric):
    """Average Euclidean distance of identity embeddings (FOMM's AED; unit-norm embeddings give [0, 2]; dlib
    calls descriptors < 0.6 apart the same person)."""

    higher_is_better = False

    def _score(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).norm(dim=-1)


def identity_separation(embeddings: Tensor, people: Sequence[str]) -> Dict[str, float]:
    """How well an identity embedding tells the people of a dataset apart: the cosine similarity and the
    distance of every pair of faces, split into pairs of one person and pairs of two people, and the ROC AUC of
    each as a same-person test (the chance that a same-person pair scores closer than a pair of two people:
    0.5 is blind, 1 separates every pair).

    The scale a model's `id_similarity` is read on: an embedder's similarities need not spread over [-1, 1]
    (dlib's descriptors of cartoon faces all lie in one narrow cone), so a prediction's similarity to its
    source means something only beside what the same embedder gives the same person and another person.

    embeddings: (N, D), one per face; people: N labels.
    """
    from torchmetrics.functional.classification import binary_auroc

    if len(people) != embeddings.shape[0]:
        raise ValueError(f"identity_separation: {embeddings.shape[0]} embeddings but {len(people)} labels")
    codes = torch.as_tensor([sorted(set(people)).index(p) for p in people])
    i, j = torch.triu_indices(len(codes), len(codes), offset=1)
    same = codes[i] == codes[j]
    if not same.any() or same.all():
        raise ValueError("identity_separation needs two faces of one person and faces of two people")
    x = embeddings.float()
    scores = {"cosine": F.cosine_similarity(x[i], x[j], dim=-1), "distance": (x[i] - x[j]).norm(dim=-1)}
    result = {"faces": float(len(codes)), "people": float(len(set(people))), "same_pairs": float(same.sum()),
              "other_pairs": float((~same).sum())}
    for name, score in scores.items():
        closer = score if name == "cosine" else -score
        result[f"{name}_same"] = float(score[same].mean())
        result[f"{name}_same_std"] = float(score[same].std())
        result[f"{name}_other"] = float(score[~same].mean())
        result[f"{name}_other_std"] = float(score[~same].std())
        result[f"{name}_auc"] = float(binary_auroc(closer, same.long()))
    return result
