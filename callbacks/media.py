"""Rank-zero media logging: an image grid per validation epoch and a short animated clip."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

# columns of the grid, in order; a column is drawn when the batch or the stage output has it
GRID_COLUMNS = ("source", "driving", "prediction", "deformed", "occlusion_map", "keypoints_overlay")


def image_grid(batch: dict, outputs: dict, num_samples: int) -> torch.Tensor:
    """(3, rows*H, cols*W) in [0, 1]: one row per sample, columns source | driving | prediction | ... ."""
    columns = []
    for name in GRID_COLUMNS:
        t = outputs.get(name, batch.get(name))
        if not torch.is_tensor(t) or t.ndim != 4:
            continue
        t = t[:num_samples].detach().float().cpu()
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        if name == "prediction" and t.min() < -0.01:  # a stage that reports [-1, 1]
            t = (t + 1) / 2
        columns.append(t.clamp(0, 1))
    size = columns[0].shape[-2:]
    columns = [torch.nn.functional.interpolate(c, size=size, mode="bilinear", align_corners=False)
               if c.shape[-2:] != size else c for c in columns]
    rows = torch.cat(columns, dim=3)  # (N, 3, H, cols*W)
    return torch.cat(list(rows), dim=1)


def wandb_logger(loggers):
    """The W&B logger among `loggers` (a list, one logger or False), or None."""
    for logger in loggers if isinstance(loggers, (list, tuple)) else [loggers]:
        if type(logger).__name__ == "WandbLogger":
            return logger
    return None


class MediaCallback(L.Callback):
    """Per validation epoch: the sample grid and an animated clip, written to RUN_DIR/media/ and sent to the
    logger that takes media (W&B: image and video, TensorBoard: image), so a run without an online logger
    can still be looked at (`mp-lightning report`)."""

    def __init__(self, enabled: bool = True, every_n_epochs: int = 1, num_samples: int = 4,
                 video_frames: int = 16, fps: int = 10):
        self.enabled = enabled
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.video_frames = video_frames
        self.fps = fps

    def _due(self, trainer) -> bool:
        return (
            self.enabled
            and not trainer.sanity_checking
            and trainer.current_epoch % max(1, self.every_n_epochs) == 0
        )

    @staticmethod
    def _media_path(trainer, kind: str, suffix: str) -> Path:
        return Path(trainer.default_root_dir) / "media" / f"val_{kind}_step{trainer.global_step:07d}{suffix}"

    @rank_zero_only
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0 or dataloader_idx != 0 or not self._due(trainer) or not isinstance(outputs, dict):
            return
        from mp_lightning.io.video import write_image

        grid = image_grid(batch, outputs, self.num_samples)
        caption = " | ".join(c for c in GRID_COLUMNS if torch.is_tensor(outputs.get(c, batch.get(c))))
        write_image(self._media_path(trainer, "samples", ".png"), grid)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # W&B
                logger.log_image(key="val/samples", images=[grid], caption=[caption], step=trainer.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                logger.experiment.add_image("val/samples", grid, global_step=trainer.global_step)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if not self._due(trainer) or self.video_frames <= 0:
            return
        clip = getattr(trainer.datamodule, "media_clip", None)
        animate = getattr(pl_module, "animate", None)
        if clip is None or animate is None:
            return
        sample = clip(num_frames=self.video_frames)
        if sample is None:
            return
        # a stage driven by inputs of its own (PIRender's motion descriptors) gets the clip's
        extra = {key: sample[key] for key in getattr(pl_module, "animation_keys", ()) if key in sample}
        with torch.no_grad():
            frames = animate(sample["source"], sample["driving"], sample.get("driving_landmarks"),
                             sample.get("source_landmarks"), **extra)
        driving = sample["driving"].to(frames.device)
        source = sample["source"].to(frames.device).expand_as(frames)
        side_by_side = torch.cat([source, driving, frames], dim=3)
        from mp_lightning.io.video import write_video

        path = write_video(self._media_path(trainer, "clip", ".mp4"), side_by_side, fps=self.fps)
        wandb = wandb_logger(trainer.loggers)
        if wandb is not None:
            import wandb as wandb_sdk

            wandb.experiment.log({"val/clip": wandb_sdk.Video(str(path), format="mp4"),
                                  "trainer/global_step": trainer.global_step})
