"""A detector's metrics over several training runs (seeds): mean, spread and interval per metric.

One run's interval is the stratified bootstrap interval over the test images that the run logged
(``<metric>_ci_low`` / ``_ci_high``; Efron & Tibshirani, 1993); several runs' is the Student-t interval
of the mean over the seeds' point estimates (:func:`experiments.evaluation.intervals.t_interval`),
which reflects the variation between trainings rather than between test images.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from experiments.evaluation.intervals import format_ci, t_interval


@dataclass
class RunRow:
    """One finished training run: its id, model, seed, start time, logged metrics and run folder."""

    run_id: str
    model: str
    seed: str
    start_time: int
    metrics: dict[str, float]
    folder: str = "-"


def _by_model(rows: list[RunRow]) -> dict[str, list[RunRow]]:
    by_model: dict[str, list[RunRow]] = defaultdict(list)
    for row in rows:
        by_model[row.model].append(row)
    return by_model


def aggregate(rows: list[RunRow], columns: list[str]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per model and column: ``(mean, std, n)`` over runs (seeds); std is 0 for a single run."""
    by_model = _by_model(rows)
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for model, group in sorted(by_model.items()):
        out[model] = {}
        for col in columns:
            values = np.array([r.metrics[col] for r in group if col in r.metrics], dtype=float)
            values = values[~np.isnan(values)]
            if values.size == 0:
                out[model][col] = (math.nan, math.nan, 0)
            else:
                std = float(values.std(ddof=1)) if values.size > 1 else 0.0
                out[model][col] = (float(values.mean()), std, int(values.size))
    return out


def intervals(rows: list[RunRow], columns: list[str], confidence: float = 0.95) -> dict[str, dict[str, tuple[float, float]]]:
    """Per model and column: the ``(low, high)`` interval of the cell.

    One run: the stratified bootstrap interval it logged (``<column>_ci_low`` / ``_ci_high``; Efron &
    Tibshirani, 1993), NaN when it logged none. Several runs (seeds): the Student-t interval of the mean
    over the seeds' point estimates (:func:`experiments.evaluation.intervals.t_interval`), which reflects
    the variation between trainings rather than between test images.
    """
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for model, group in sorted(_by_model(rows).items()):
        out[model] = {}
        for col in columns:
            runs = [r for r in group if col in r.metrics and not math.isnan(r.metrics[col])]
            if len(runs) == 1:
                metrics = runs[0].metrics
                out[model][col] = (metrics.get(f"{col}_ci_low", math.nan), metrics.get(f"{col}_ci_high", math.nan))
            elif len(runs) > 1:
                out[model][col] = t_interval([r.metrics[col] for r in runs], confidence)[1:]
            else:
                out[model][col] = (math.nan, math.nan)
    return out


def interval_cell(mean: float, std: float, n: int, low: float, high: float, digits: int = 3) -> str:
    """``0.942 [0.918, 0.963]`` for one run, ``0.942 ± 0.011 [0.915, 0.969] (n=3)`` for several;
    without an interval, as :func:`format_cell`."""
    if n == 0:
        return "n/a"
    if math.isnan(low) and math.isnan(high):
        return format_cell(mean, std, n, digits)
    if n == 1:
        return format_ci(mean, low, high, digits)
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] (n={n})"


def format_cell(mean: float, std: float, n: int, digits: int = 4) -> str:
    if n == 0:
        return "n/a"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"
