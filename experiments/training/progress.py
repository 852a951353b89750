"""Lightning's progress display: bars on a terminal, plain log lines in log files and CI logs.

:func:`progress_bar` is the ``callbacks.progress_bar`` of ``conf/callbacks/default.yaml``: Lightning's
``RichProgressBar`` when stderr is a terminal (:func:`experiments.process.on_terminal`), :class:`LogProgressBar`
otherwise, whose lines come from the suite's one :class:`~experiments.process.ProgressLines` (a line every 10 %
or every 30 s, no carriage return), with one line per epoch that gives its metrics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from experiments.process import ProgressLines, on_terminal

log = logging.getLogger(__name__)


def progress_bar() -> ProgressBar:
    """``RichProgressBar`` on a terminal, :class:`LogProgressBar` elsewhere."""
    return RichProgressBar() if on_terminal() else LogProgressBar()


def epoch_line(epoch: int, metrics: Mapping[str, Any]) -> str:
    """``epoch 3: train/loss 0.4123, val/auc 0.9312, ...``: the scalar metrics, sorted by name."""
    values = []
    for name in sorted(metrics):
        try:
            values.append(f"{name} {float(metrics[name]):.4g}")
        except (TypeError, ValueError, RuntimeError):  # not a scalar
            continue
    return f"epoch {epoch}: " + (", ".join(values) if values else "no metrics")


def _total(batches: Any) -> int | None:
    """A batch count of Lightning's (an int, ``inf``, or a list of them per dataloader) as a total, or None."""
    total = sum(batches) if isinstance(batches, (list, tuple)) else batches
    return None if total is None or math.isinf(total) else int(total)


class LogProgressBar(ProgressBar):
    """Progress for logs: a line every 10 % or 30 s of each epoch's training and validation, of testing and
    of prediction, and after each epoch one line with its metrics (``epoch 3: train/loss ..., val/auc ...``).

    The epoch's line is written when the next epoch starts (or training ends): the training metrics of an
    epoch are logged by the module's own ``on_train_epoch_end``, which runs after this callback's.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._train: ProgressLines | None = None
        self._eval: ProgressLines | None = None
        self._finished_epoch: int | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _lines(self, desc: str, batches: Any) -> ProgressLines | None:
        return ProgressLines(desc, _total(batches), "batch") if self._enabled else None

    def _write_epoch_line(self, trainer: L.Trainer) -> None:
        if self._finished_epoch is not None and self._enabled:
            log.info("%s", epoch_line(self._finished_epoch, trainer.callback_metrics))
        self._finished_epoch = None

    # -- training
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_epoch_line(trainer)
        self._train = self._lines(f"epoch {trainer.current_epoch}: train", self.total_train_batches)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        if self._train is not None:
            self._train.update(1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train is not None:
            self._train.close()
            self._train = None
        self._finished_epoch = trainer.current_epoch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_epoch_line(trainer)

    # -- validation (not the sanity check), test and prediction
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval = self._lines(f"epoch {trainer.current_epoch}: val", trainer.num_val_batches)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval = self._lines("test", trainer.num_test_batches)

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval = self._lines("predict", trainer.num_predict_batches)

    def _eval_batch(self, *args: Any, **kwargs: Any) -> None:
        if self._eval is not None:
            self._eval.update(1)

    def _eval_end(self, *args: Any, **kwargs: Any) -> None:
        if self._eval is not None:
            self._eval.close()
            self._eval = None

    on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _eval_batch
    on_validation_epoch_end = on_test_epoch_end = on_predict_epoch_end = _eval_end
