"""mp-lightning: MetaPortrait, FOMM and PIRender in one PyTorch Lightning experiment framework."""

__version__ = "0.1.0"


def load_stage(path, map_location="cpu", eval_mode=True):
    """The LightningModule from any mp-lightning checkpoint, in eval mode.

    `module(batch)` takes the DataModule's batch dict and returns at least `prediction` (B,3,H,W) in [0,1].
    """
    from mp_lightning.stages.base import load_stage as _load

    return _load(path, map_location=map_location, eval_mode=eval_mode)


__all__ = ["load_stage", "__version__"]
