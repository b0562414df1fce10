"""Runs the metric suite on validation and test for any stage or baseline.

Metrics are torchmetrics objects, so DDP reduction is theirs: every rank updates with its own
samples and `compute()` returns the value over all ranks' samples.
"""
from __future__ import annotations

import lightning as L
import torch

from mp_lightning.batch import is_cross_identity


def split_prefix(split: str, set_name: str | None) -> str:
    """`val/lpips`, `test/lpips` for self-reenactment; `test/cross/id_similarity` for other sets; a stage's
    output variants (`outputs["variants"][name]`) add `name/`: `val/adapted/lpips`."""
    if set_name in (None, "", "self"):
        return f"{split}/"
    return f"{split}/{set_name}/"


# what the progress bar shows of a validation: the self-reenactment pixel metrics, which every run has
PROGRESS_BAR = ("val/l1", "val/psnr")


class MetricsCallback(L.Callback):
    def __init__(self, metrics_config):
        self.metrics_config = metrics_config
        self._suites: dict[str, object] = {}
        self.last_results: dict[str, float] = {}
        self.skipped: dict[str, str] = {}  # metric -> why it was not computed (missing extra or weights)
        self.set_names: dict[str, tuple] = {}  # split -> name of each dataloader, e.g. ("self", "cross")

    def _suite(self, pl_module, prefix: str, reference_available: bool):
        if prefix not in self._suites:
            from mp_lightning.metrics.suite import MetricSuite

            self._suites[prefix] = MetricSuite(self.metrics_config, reference_available=reference_available)
        suite = self._suites[prefix]
        return suite.to(pl_module.device)

    def _set_name(self, trainer, split: str, dataloader_idx: int) -> str | None:
        names = getattr(trainer.datamodule, f"{split}_set_names", None) if trainer.datamodule else None
        names = names or self.set_names.get(split)
        if names and dataloader_idx < len(names):
            return names[dataloader_idx]
        return None if dataloader_idx == 0 else str(dataloader_idx)

    def _update(self, trainer, pl_module, split, outputs, batch, dataloader_idx):
        if not isinstance(outputs, dict) or "prediction" not in outputs:
            return
        name = self._set_name(trainer, split, dataloader_idx)
        cross = name == "cross" or is_cross_identity(batch)
        prefix = split_prefix(split, name)
        suite = self._suite(pl_module, prefix, reference_available=not cross)
        with torch.no_grad():
            suite.update(outputs, batch)
            # other predictions of the same batch (the meta stage's after adapting to each task: `adapted`),
            # scored under `val/<variant>/`
            for variant, variant_outputs in (outputs.get("variants") or {}).items():
                self._suite(pl_module, f"{prefix}{variant}/", reference_available=not cross).update(variant_outputs,
                                                                                                    batch)

    def _log(self, trainer, pl_module, split):
        for prefix, suite in list(self._suites.items()):
            if not prefix.startswith(f"{split}/"):
                continue
            values = suite.compute()
            suite.reset()
            for name, reason in suite.new_skip_reasons().items():
                if name not in self.skipped and trainer.is_global_zero:
                    print(f"[metrics] {reason}")
                self.skipped.setdefault(name, reason)
            for key, value in values.items():
                value = torch.as_tensor(value, dtype=torch.float32, device=pl_module.device)
                # already reduced over ranks by torchmetrics; logging the same value on every rank
                pl_module.log(f"{prefix}{key}", value, sync_dist=False, rank_zero_only=False,
                              prog_bar=f"{prefix}{key}" in PROGRESS_BAR)
                self.last_results[f"{prefix}{key}"] = float(value)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._update(trainer, pl_module, "val", outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update(trainer, pl_module, "test", outputs, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module):
        self._log(trainer, pl_module, "test")
