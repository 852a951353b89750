"""Confidence intervals: percentile intervals of bootstrap replicates, Student-t intervals over seeds,
and their printed form.

* :func:`percentile_interval`: the central percentile interval of bootstrap replicates (Efron &
  Tibshirani, 1993, "An Introduction to the Bootstrap", ch. 13).
* :func:`t_interval`: Student-t interval of a mean over training seeds.
* :func:`format_ci`: ``"0.942 [0.918, 0.963]"``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from experiments.evaluation.score_counts import as_flat_numpy

_NAN = float("nan")


def check_confidence(confidence: float) -> float:
    """``confidence`` as a float in (0, 1); ValueError otherwise."""
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def percentile_interval(values: Any, confidence: float = 0.95) -> tuple[float, float]:
    """Central percentile interval of bootstrap replicates; NaN replicates are ignored.

    Returns ``(nan, nan)`` when every replicate is NaN.
    """
    confidence = check_confidence(confidence)
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    if finite.size == 0:
        return _NAN, _NAN
    low, high = np.quantile(finite, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def t_interval(values: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval of the mean of ``values`` (e.g. one metric over seeds).

    ``mean +- t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with the sample standard
    deviation ``s`` (ddof = 1). One value gives ``(value, nan, nan)``; no value raises.
    """
    confidence = check_confidence(confidence)
    x = as_flat_numpy(values).astype(np.float64)
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(np.mean(x))
    if x.size == 1:
        return mean, _NAN, _NAN
    t_quantile = float(stats.t.ppf((1.0 + confidence) / 2.0, df=x.size - 1))
    half_width = t_quantile * float(np.std(x, ddof=1)) / math.sqrt(x.size)
    return mean, mean - half_width, mean + half_width


def format_ci(value: float, low: float, high: float, digits: int = 3) -> str:
    """``"0.942 [0.918, 0.963]"``; just ``"0.942"`` when both bounds are NaN (an interval that is undefined)."""
    if math.isnan(low) and math.isnan(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
