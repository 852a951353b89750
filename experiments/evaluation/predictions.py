"""Scoring a trained detector on the val and test splits, overall and per generator.

The decision threshold is reported twice: at 0.5, and at a threshold chosen on
the validation split and then applied unchanged to the test split (never chosen
on test).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from experiments.evaluation.metrics import (
    binary_metrics,
    calibrated_threshold,
    flatten_metrics,
    metrics_by_group,
    metrics_vs_all_reals,
)


@dataclass
class Predictions:
    """Scores of one split: P(synthetic), 0/1 labels, generator ids and dataset indices."""

    prob: np.ndarray
    label: np.ndarray
    generator: np.ndarray
    index: np.ndarray
    generator_names: list[str] = field(default_factory=list)

    @classmethod
    def from_batches(cls, batches: list[dict], generator_names: list[str]) -> "Predictions":
        def cat(key: str, dtype) -> np.ndarray:
            parts = [b[key].reshape(-1) for b in batches if b[key].numel()]
            return torch.cat(parts).numpy().astype(dtype) if parts else np.zeros(0, dtype)

        return cls(cat("prob", np.float64), cat("label", np.int64), cat("generator", np.int64),
                   cat("index", np.int64), list(generator_names))


def predict_split(trainer: Trainer, module: LightningModule, loader: DataLoader, generator_names: list[str],
                  ckpt_path: str | None = None) -> Predictions:
    batches = trainer.predict(module, dataloaders=loader, ckpt_path=ckpt_path)
    return Predictions.from_batches(batches, generator_names)


#: Prefix of the per-generator metrics against every real test image: ``test/vs_all_reals/<generator>/<metric>``.
VS_ALL_REALS = "vs_all_reals"


def score(val: Predictions, test: Predictions, threshold_criterion: str = "youden",
          threshold: float | None = None) -> dict[str, float]:
    """Flat MLflow metrics: ``best_val/<m>``, ``test/<m>``, the val-calibrated threshold and the test metrics at it.

    Per generator, two views: ``test/<generator>/<m>`` scores a generator's fakes against that generator's own
    reals, and ``test/vs_all_reals/<generator>/<m>`` against every real test image
    (:func:`~experiments.evaluation.metrics.metrics_vs_all_reals`).

    ``threshold``: the decision threshold already chosen on the validation split of the detector's training run
    (``threshold/val_calibrated`` of that run); None chooses it here on ``val`` with ``threshold_criterion``.
    """
    names = dict(enumerate(test.generator_names))
    out: dict[str, float] = {}
    out.update({f"best_val/{k}": v for k, v in binary_metrics(val.prob, val.label).items()})
    out.update(flatten_metrics(metrics_by_group(test.prob, test.label, test.generator, names), "test"))
    out.update(flatten_metrics(metrics_vs_all_reals(test.prob, test.label, test.generator, names),
                               f"test/{VS_ALL_REALS}"))
    if threshold is None:
        threshold = calibrated_threshold(val.prob, val.label, criterion=threshold_criterion)
    out["threshold/val_calibrated"] = float(threshold)
    out.update(metrics_at_threshold(test, threshold))
    return out


def metrics_at_threshold(test: Predictions, threshold: float, suffix: str = "") -> dict[str, float]:
    """``test/<m>_at_val_threshold<suffix>`` for the threshold-dependent metrics at ``threshold``."""
    at_val = binary_metrics(test.prob, test.label, threshold=threshold)
    return {f"test/{key}_at_val_threshold{suffix}": at_val[key]
            for key in ("accuracy", "balanced_accuracy", "f1", "precision", "recall")}


TABLE_METRICS = ("accuracy", "f1", "precision", "recall", "auc", "ap", "eer", "ece")


def print_metrics_table(title: str, metrics: dict[str, float]) -> None:
    """Val (best checkpoint) and test rows of the main metrics, as a console table."""
    table = Table(title=title)
    table.add_column("split")
    for key in TABLE_METRICS:
        table.add_column(key, justify="right")
    for split, prefix in (("val", "best_val/"), ("test", "test/")):
        table.add_row(split, *(f"{metrics.get(prefix + k, float('nan')):.4f}" for k in TABLE_METRICS))
    Console(width=160).print(table)
