"""The batch contract between the DataModule, the stages and the callbacks: the keys of each sampling mode,
the one test for "is this batch cross-identity?", and identity tasks seen as pairs batches.

Images are float32 `(.., 3, H, W)` in [0, 1]; landmarks float32 `(.., K, 2)` in [0, 1], x right, y down
(absent when `data.use_landmarks` is false). Every mode adds `source_identity` (B, D) when the split's clips
have `<clip>.identity.npy` files, and `source_identity_kind` (list[str]) when `ROOT/identity.json` declares
their embedding. A stage's per-sample transform adds its own keys (MetaPortrait: `source_line`,
`driving_line`, `eye_mask`, `mouth_mask`, `gaze_points`; for tasks `{support,query}_driving_line` etc.).
"""
from __future__ import annotations

import torch

from mp_lightning.choices import Choice


class SamplingMode(Choice):
    """`data.mode`: what one item of the DataModule is."""

    pairs = "pairs"  # a source and a driving frame of the same clip
    windows = "windows"  # T consecutive frames of a clip (temporal SR)
    identity_tasks = "identity_tasks"  # one person: a source, support and query driving frames (meta-learning)
    cross_identity = "cross_identity"  # a source and a driving frame of another identity (no ground truth)


PAIR_KEYS = ("source", "driving", "source_landmarks", "driving_landmarks", "source_index", "driving_index",
             "clip", "identity")
KEYS = {
    SamplingMode.pairs: PAIR_KEYS,
    # the driving frame's clip and identity are the source's in every other mode
    # plus the driving clip's first frame: the reference of relative motion and landmark retargeting
    SamplingMode.cross_identity: PAIR_KEYS + ("driving_clip", "driving_identity", "driving_initial",
                                              "driving_initial_landmarks"),
    # plus source / driving = first / last frame of the window, as in pairs
    SamplingMode.windows: PAIR_KEYS + ("frames", "frames_landmarks", "frame_indices"),
    SamplingMode.identity_tasks: ("source", "source_landmarks", "source_index", "clip", "identity")
    + tuple(f"{split}_driving{suffix}" for split in ("support", "query") for suffix in ("", "_landmarks", "_index")),
}
TASK_SPLITS = ("support", "query")
# per-task driving inputs a stage's sample transform derives, carried into each task's pairs batch
_TASK_DERIVED = ("driving_line", "eye_mask", "mouth_mask", "gaze_points")


def is_cross_identity(batch: dict) -> bool:
    """True when the driving frames are another person's: there is no ground truth for the prediction.
    The mark is `driving_clip`, which only the cross_identity mode sets (beside `driving_identity`)."""
    return "driving_clip" in batch


def holds_tasks(batch: dict) -> bool:
    """True for an `identity_tasks` batch not yet turned into pairs (see `tasks_as_pairs`)."""
    return "support_driving" in batch and "driving" not in batch


def task_pairs(batch: dict, task_index: int, split: str) -> dict:
    """One task of an `identity_tasks` batch as a `pairs` batch.

    The task's source is repeated against its `split` ("support" or "query") driving frames:
    source, driving (N, 3, H, W); source_landmarks, driving_landmarks (N, K, 2); source_index,
    driving_index (N,); clip, identity (list[str] of length N); source_identity (N, D) if present;
    source_line (N, 3, H, W) and driving_line / eye_mask / mouth_mask / gaze_points when the batch
    carries the source line and that split's `{split}_driving_line` etc. (a stage's sample transform).
    """
    if split not in TASK_SPLITS:
        raise ValueError(f"split must be 'support' or 'query', got {split!r}")
    driving = batch[f"{split}_driving"][task_index]
    n = driving.shape[0]
    out = {
        "source": batch["source"][task_index].unsqueeze(0).repeat(n, 1, 1, 1),
        "driving": driving,
        "source_index": batch["source_index"][task_index].repeat(n),
        "driving_index": batch[f"{split}_driving_index"][task_index],
        "clip": [batch["clip"][task_index]] * n,
        "identity": [batch["identity"][task_index]] * n,
    }
    if "source_landmarks" in batch:
        out["source_landmarks"] = batch["source_landmarks"][task_index].unsqueeze(0).repeat(n, 1, 1)
        out["driving_landmarks"] = batch[f"{split}_driving_landmarks"][task_index]
    if "source_identity" in batch:
        out["source_identity"] = batch["source_identity"][task_index].unsqueeze(0).repeat(n, 1)
    if "source_identity_kind" in batch:
        out["source_identity_kind"] = [batch["source_identity_kind"][task_index]] * n
    if "source_semantics" in batch:
        out["source_semantics"] = batch["source_semantics"][task_index].unsqueeze(0).repeat(n, 1, 1)
        out["driving_semantics"] = batch[f"{split}_driving_semantics"][task_index]
    if "semantics_kind" in batch:
        out["semantics_kind"] = [batch["semantics_kind"][task_index]] * n
    if "source_line" in batch:
        out["source_line"] = batch["source_line"][task_index].unsqueeze(0).repeat(n, 1, 1, 1)
    for key in _TASK_DERIVED:
        if f"{split}_{key}" in batch:
            out[key] = batch[f"{split}_{key}"][task_index]
    return out


def tasks_as_pairs(batch: dict, split: str = "query") -> dict:
    """All tasks of an `identity_tasks` batch as one pairs batch (their `split` frames, concatenated)."""
    parts = [task_pairs(batch, i, split) for i in range(batch["source"].shape[0])]
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        out[key] = torch.cat(values) if torch.is_tensor(values[0]) else [v for vs in values for v in vs]
    return out
