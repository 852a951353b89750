"""Scoring a trained detector on the val and test splits, overall and per generator.

The decision threshold is reported twice: at 0.5, and at a threshold chosen on
the validation split and then applied unchanged to the test split (never chosen
on test).
"""

from __future__ import annotations

import csv
import math
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from experiments.data.audit.inspection import file_content_hash
from experiments.data.layouts import real_source
from experiments.evaluation.metrics import (
    ALL_GROUPS,
    binary_metrics,
    calibrated_threshold,
    flatten_metrics,
    metrics_by_group,
    metrics_vs_all_reals,
)
from experiments.evaluation.bootstrap import bootstrap_metric_cis


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


@dataclass(frozen=True)
class BootstrapSettings:
    """How the test metrics get their intervals: ``resamples`` stratified bootstrap resamples (0 = none) at
    ``confidence``, drawn from ``seed`` (the run's seed, so a rerun logs the same intervals).

    A task builds it from ``stats.bootstrap_resamples``, ``stats.confidence`` and ``seed`` of its config;
    a bad value raises ``ValueError`` naming that key.
    """

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 0:
            raise ValueError(
                f"stats.bootstrap_resamples must be >= 0 (0 turns the intervals off), got {self.resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"stats.confidence must be in (0, 1), e.g. stats.confidence=0.95; got {self.confidence}")


def score(val: Predictions, test: Predictions, threshold_criterion: str = "youden",
          threshold: float | None = None, bootstrap: BootstrapSettings | None = None) -> dict[str, float]:
    """Flat MLflow metrics: ``best_val/<m>``, ``test/<m>``, the val-calibrated threshold and the test metrics at it.

    Per generator, two views: ``test/<generator>/<m>`` scores a generator's fakes against that generator's own
    reals, and ``test/vs_all_reals/<generator>/<m>`` against every real test image
    (:func:`~experiments.evaluation.metrics.metrics_vs_all_reals`).

    ``threshold``: the decision threshold already chosen on the validation split of the detector's training run
    (``threshold/val_calibrated`` of that run); None chooses it here on ``val`` with ``threshold_criterion``.
    With ``bootstrap`` (and ``bootstrap.resamples > 0``), the test metrics that have intervals get
    ``<name>_ci_low`` and ``<name>_ci_high`` next to them (:func:`interval_metrics`).
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
    if bootstrap is not None and bootstrap.resamples > 0:
        out.update(interval_metrics(test, bootstrap, val_threshold=threshold))
    return out


#: Test metrics logged with ``_ci_low`` / ``_ci_high``, pooled and per generator.
INTERVAL_METRICS = ("auc", "ap", "accuracy", "balanced_accuracy", "tpr_at_5fpr", "eer")


def interval_metrics(test: Predictions, bootstrap: BootstrapSettings,
                     val_threshold: float | None = None) -> dict[str, float]:
    """Stratified bootstrap percentile intervals (Efron & Tibshirani, 1993, ch. 13) of the test metrics.

    ``test/<m>_ci_low`` and ``test/<m>_ci_high`` for each of :data:`INTERVAL_METRICS` (accuracies at 0.5, as
    ``test/accuracy``), the same per generator (``test/<generator>/<m>_ci_low``), and, given the
    val-chosen threshold, ``test/accuracy_at_val_threshold_ci_*`` and ``test/balanced_accuracy_at_val_threshold_ci_*``.
    Every set of intervals uses the resamples of ``bootstrap.seed``; reals and fakes are resampled separately.
    An interval that is undefined (one class only in a generator) is NaN.
    """
    names = dict(enumerate(test.generator_names))
    nested: dict[str, dict[str, float]] = {ALL_GROUPS: _bounds(test.prob, test.label, 0.5, bootstrap)}
    for group_id in np.unique(test.generator).tolist():
        mask = test.generator == group_id
        nested[str(names.get(int(group_id), group_id))] = _bounds(test.prob[mask], test.label[mask], 0.5, bootstrap)
    if val_threshold is not None:
        at_val = _bounds(test.prob, test.label, val_threshold, bootstrap, ("accuracy", "balanced_accuracy"))
        nested[ALL_GROUPS].update({k.replace("_ci_", "_at_val_threshold_ci_", 1): v for k, v in at_val.items()})
    return flatten_metrics(nested, "test")


def _bounds(prob: np.ndarray, label: np.ndarray, threshold: float, bootstrap: BootstrapSettings,
            keep: Sequence[str] = INTERVAL_METRICS) -> dict[str, float]:
    """``{<m>_ci_low, <m>_ci_high}`` for the metrics in ``keep`` (all NaN for an empty split)."""
    if len(prob) == 0:
        return {f"{m}_ci_{side}": math.nan for m in keep for side in ("low", "high")}
    cis = bootstrap_metric_cis(prob, label, threshold, bootstrap.resamples, bootstrap.confidence, bootstrap.seed)
    return {f"{m}_ci_{side}": value for m in keep for side, value in zip(("low", "high"), cis[m])}


#: Columns of ``predictions_<split>.csv``.
PREDICTION_COLUMNS = ("index", "path", "relpath", "hash", "label", "generator", "prob", "source")


def write_predictions_csv(pred: Predictions, samples: Sequence[Any], path: str | Path,
                          hashes: Mapping[str, str] | None = None) -> Path:
    """One row per scored image: ``index, path, relpath, hash, label, generator, prob, source``
    (:data:`PREDICTION_COLUMNS`).

    ``samples`` are the split's samples (``datamodule.splits[split]``), indexed by ``pred.index``. ``relpath`` is
    the path relative to ``data.root`` and ``hash`` the content hash of the file
    (:func:`~experiments.data.audit.inspection.content_hash`, the data check's; taken from ``hashes``, by path,
    or read from the file, empty when it cannot be read): ``task=compare`` pairs images by it, so runs made on
    other mounts or machines compare. ``source`` is a real image's source
    (:func:`~experiments.data.layouts.base.real_source`), empty for a synthetic one. Probabilities are written at
    full precision (``repr``), so paired tests read exactly the scores the run's metrics were computed from.
    """
    path = Path(path)
    for index in pred.index:
        if not 0 <= index < len(samples):
            raise IndexError(f"prediction index {index} is outside the split's {len(samples)} samples")
    files = [samples[int(i)].path for i in pred.index]
    known = dict(hashes or {})
    missing = [f for f in dict.fromkeys(files) if f not in known]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:  # hashlib releases the GIL
        known.update(zip(missing, pool.map(file_content_hash, missing)))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(PREDICTION_COLUMNS)
        for index, label, generator, prob in zip(pred.index, pred.label, pred.generator, pred.prob):
            sample = samples[index]
            name = pred.generator_names[generator] if 0 <= generator < len(pred.generator_names) else generator
            writer.writerow([int(index), sample.path, getattr(sample, "relpath", "") or "", known.get(sample.path) or "",
                             int(label), name, repr(float(prob)), real_source(sample)])
    return path


def metrics_at_threshold(test: Predictions, threshold: float, suffix: str = "") -> dict[str, float]:
    """``test/<m>_at_val_threshold<suffix>`` for the threshold-dependent metrics at ``threshold``."""
    at_val = binary_metrics(test.prob, test.label, threshold=threshold)
    return {f"test/{key}_at_val_threshold{suffix}": at_val[key]
            for key in ("accuracy", "balanced_accuracy", "f1", "precision", "recall")}


TABLE_METRICS = ("accuracy", "f1", "precision", "recall", "auc", "ap", "eer", "ece")


def print_metrics_table(title: str, metrics: dict[str, float]) -> None:
    """Val (best checkpoint) and test rows of the main metrics, as a console table; when the test metrics
    have bootstrap intervals, a row of them below."""
    table = Table(title=title)
    table.add_column("split")
    for key in TABLE_METRICS:
        table.add_column(key, justify="right")
    for split, prefix in (("val", "best_val/"), ("test", "test/")):
        table.add_row(split, *(f"{metrics.get(prefix + k, float('nan')):.4f}" for k in TABLE_METRICS))
    if any(f"test/{k}_ci_low" in metrics for k in TABLE_METRICS):
        table.add_row("test CI", *(_interval_text(metrics, f"test/{k}") for k in TABLE_METRICS))
    Console(width=160).print(table)


def _interval_text(metrics: Mapping[str, float], name: str) -> str:
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return ""
    return f"[{low:.4f}, {high:.4f}]"
