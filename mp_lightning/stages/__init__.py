"""Training stages: one LightningModule per stage of a method, chosen by the experiment's `stage:` key."""
from __future__ import annotations

import importlib

# name -> "module:Class"; imported lazily so that `print-config` does not import every network
STAGES = {
    "warp": "mp_lightning.stages.warp:WarpStage",
    "refine": "mp_lightning.stages.refine:RefineStage",
    "sr": "mp_lightning.stages.super_resolution:SuperResolutionStage",
    "fomm": "mp_lightning.stages.fomm:FOMMStage",
    "pirender": "mp_lightning.stages.pirender:PIRenderStage",
    "meta": "mp_lightning.stages.meta:MetaLearningModule",
}


def stage_names() -> list[str]:
    return sorted(STAGES)


def stage_class(name: str):
    module_name, cls_name = STAGES[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)
