"""The LightningModule shared by every CNN detector: loss, optimisation, metrics.

Synapse-7 recipe: ``BCEWithLogitsLoss``, AdamW (lr 1e-3, weight decay 1e-2),
``ReduceLROnPlateau`` on the validation loss (factor 0.1, patience 2); early
stopping on validation F1 lives in the callbacks config.
"""

from __future__ import annotations

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
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.criterion = nn.BCEWithLogitsLoss()
        self.train_metrics = MetricCollection({"accuracy": BinaryAccuracy(), "f1": BinaryF1Score()}, prefix="train/")
        self.train_loss = MeanMetric()
        # image-weighted means, summed over processes at epoch end: exact under DDP with uneven shards
        self.eval_loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.val_metrics = binary_metric_collection("val/")
        self.test_metrics = binary_metric_collection("test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

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
