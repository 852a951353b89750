"""The LightningModule shared by every CNN detector: loss, optimisation, metrics.

Synapse-7 recipe: ``BCEWithLogitsLoss``, AdamW (lr 1e-3, weight decay 1e-2),
``ReduceLROnPlateau`` on the validation loss (factor 0.1, patience 2); early
stopping on validation F1 lives in the callbacks config.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)

from experiments.data.device_decode import decode_on_device
from features.precision import as_unit_float

log = logging.getLogger(__name__)


def binary_metric_collection(prefix: str) -> MetricCollection:
    """Accuracy, F1, precision, recall, AUROC and AP at threshold 0.5 (torchmetrics, DDP-synced)."""
    return MetricCollection(
        {
            "accuracy": BinaryAccuracy(),
            "f1": BinaryF1Score(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "auc": BinaryAUROC(),
            "ap": BinaryAveragePrecision(),
        },
        prefix=prefix,
    )


class DetectorModule(L.LightningModule):
    """Trains a detector ``net`` (``forward(x) -> (B,) logits``) as a binary real/synthetic classifier.

    Args:
        net: a ``detectors`` model.
        optimizer: partial optimizer taking the parameters (Hydra ``_partial_: true``).
        scheduler: optional partial LR scheduler taking the optimizer.
        scheduler_monitor: metric the scheduler watches (``ReduceLROnPlateau``).
        channels_last: run the net and its input in the ``channels_last`` memory format; ``"auto"`` = on CUDA,
            where convolutions under mixed precision are markedly faster in it.
        compile: ``torch.compile`` the net (compiled in place, so checkpoints keep their keys); the first
            training step, compilation included, is timed and logged as ``time/first_step_seconds``.

    Batches arrive as uint8 and become float in [0, 1] on the model's device (:meth:`on_after_batch_transfer`).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_monitor: str = "val/loss",
        channels_last: bool | str = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__()
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"model.channels_last must be true, false or auto, got {channels_last!r}")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.channels_last_setting = channels_last
        self.compile_net = bool(compile)
        self._first_step_start: float | None = None
        self.criterion = nn.BCEWithLogitsLoss()
        self.train_metrics = MetricCollection({"accuracy": BinaryAccuracy(), "f1": BinaryF1Score()}, prefix="train/")
        self.train_loss = MeanMetric()
        # image-weighted means, summed over processes at epoch end: exact under DDP with uneven shards
        self.eval_loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.val_metrics = binary_metric_collection("val/")
        self.test_metrics = binary_metric_collection("test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def channels_last(self) -> bool:
        if self.channels_last_setting == "auto":
            trainer = self._trainer  # attached from ``setup`` on, before the net is moved to its device
            device = trainer.strategy.root_device if trainer is not None else self.device
            return device.type == "cuda"
        return bool(self.channels_last_setting)

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.compile_net and not getattr(self.net, "_compiled_by_suite", False):
            self.net.compile()
            self.net._compiled_by_suite = True

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """uint8 images -> float in [0, 1], on the device they were just copied to (``channels_last`` if set).

        JPEG bytes sent by ``data.decode=device`` are decoded here first, batched, on that device."""
        batch = decode_on_device(batch, self.device)
        if batch.get("empty"):
            return batch
        images = as_unit_float(batch["image"])
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return {**batch, "image": images}

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self.global_step == 0 and self._first_step_start is None:
            self._first_step_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self._first_step_start is not None and self._first_step_start > 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - self._first_step_start
            self._first_step_start = -1.0  # once per run
            if self.compile_net:
                log.info("model.compile: the first training step took %.1f s, compilation included", seconds)
            if self.logger is not None:
                self.logger.log_metrics({"time/first_step_seconds": seconds}, step=0)

    def _step(self, batch: dict, metrics: MetricCollection, stage: str) -> torch.Tensor | None:
        skipped = int(batch["skipped"])
        if skipped:
            self.log(f"data/{stage}_skipped", float(skipped), on_step=False, on_epoch=True, reduce_fx="sum")
        if batch.get("empty"):
            return None
        logits = self(batch["image"])
        labels = batch["label"]
        loss = self.criterion(logits.float(), labels.float())
        metrics.update(torch.sigmoid(logits.detach().float()), labels.long())
        n = labels.shape[0]
        if stage == "train":
            self.train_loss.update(loss.detach(), weight=n)
        else:
            self.eval_loss[stage].update(loss.detach(), weight=n)
            self.log(f"{stage}/loss", self.eval_loss[stage], on_step=False, on_epoch=True, prog_bar=stage == "val",
                     batch_size=n)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        return self._step(batch, self.train_metrics, "train")

    def on_train_epoch_end(self) -> None:
        """Write the epoch's training metrics straight to the logger.

        The epoch's checkpoint is saved after this hook (``save_on_train_epoch_end``),
        so a run killed at any point never has a checkpoint ahead of its logged
        metrics, and ``resume=`` neither loses nor repeats a metric step.
        """
        values = {"train/loss": self.train_loss.compute(), **self.train_metrics.compute()}
        self.train_loss.reset()
        self.train_metrics.reset()
        self.log_dict(values, logger=False, prog_bar=False)
        if self.logger is not None:
            step = max(self.trainer.fit_loop.epoch_loop._batches_that_stepped - 1, 0)
            self.logger.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        if batch.get("empty"):
            return {"prob": torch.empty(0), "label": torch.empty(0), "generator": torch.empty(0, dtype=torch.long),
                    "index": torch.empty(0, dtype=torch.long)}
        probs = torch.sigmoid(self(batch["image"]).float())
        return {"prob": probs.cpu(), "label": batch["label"].cpu(), "generator": batch["generator"].cpu(),
                "index": batch["index"].cpu()}

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor, "interval": "epoch"},
        }
