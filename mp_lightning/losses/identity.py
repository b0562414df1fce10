"""The identity loss on face embeddings (MetaPortrait's ID loss: weight 20 in the paper, off in the released code)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_loss(embedding: torch.Tensor, target_embedding: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity between identity embeddings (B, D) and (B, D) (target detached)."""
    a = F.normalize(embedding, dim=1)
    b = F.normalize(target_embedding.detach(), dim=1)
    return 1 - (a * b).sum(1).mean()
