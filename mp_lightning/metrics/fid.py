"""FID over a whole split (torchmetrics; needs torch-fidelity and its Inception weights)."""
from __future__ import annotations

import importlib
from typing import Optional

from torchmetrics import Metric

from mp_lightning.errors import MissingWeightsError


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


def build_fid() -> Metric:
    from torchmetrics.image.fid import FrechetInceptionDistance

    # normalize=True: images arrive as floats in [0, 1]
    return FrechetInceptionDistance(feature=2048, normalize=True)
