"""Stratified bootstrap intervals of detection metrics.

:func:`stratified_bootstrap_ci` and :func:`bootstrap_metric_cis` give percentile intervals from a
bootstrap that resamples reals and fakes separately, so every resample keeps the class counts of the
test set (Efron & Tibshirani, 1993, "An Introduction to the Bootstrap", ch. 13). Conventions are those
of :mod:`experiments.evaluation.score_counts`.

The metrics are evaluated without sorting each resample: every resample is a multiset of the original
scores, so it is fully described by how many reals and fakes it holds at each distinct score
(:class:`~experiments.evaluation.score_counts.ScoreCounts`), and the count engine computes a whole block
of resamples at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from experiments.evaluation.intervals import check_confidence, percentile_interval
from experiments.evaluation.score_counts import (
    CountMetric,
    ScoreCounts,
    finite_scores_and_labels,
    probabilities_and_labels,
    standard_metrics,
)

#: A metric of one sample: ``fn(probs, labels) -> float``.
MetricFn = Callable[[np.ndarray, np.ndarray], float]

#: Largest number of (resample, distinct score) cells held in one block of count arrays.
_BLOCK_CELLS = 4_000_000


def _resampled_counts(codes: np.ndarray, draws: np.ndarray, n_values: int) -> np.ndarray:
    """(r, K) counts of each distinct score among ``codes[draws[j]]`` for each row ``j``."""
    rows = draws.shape[0]
    if draws.shape[1] == 0:
        return np.zeros((rows, n_values))
    flat = codes[draws] + (np.arange(rows) * n_values)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * n_values).reshape(rows, n_values).astype(np.float64)


def _count_metric_replicates(
    scores: np.ndarray, neg_idx: np.ndarray, pos_idx: np.ndarray, neg_draws: np.ndarray, pos_draws: np.ndarray,
    metrics: Mapping[str, CountMetric],
) -> dict[str, np.ndarray]:
    """Replicates of the count metrics, in blocks of resamples that keep the count arrays small."""
    values, codes = np.unique(scores, return_inverse=True)
    n_resamples, k = neg_draws.shape[0], values.size
    block = max(1, _BLOCK_CELLS // max(k, 1))
    out = {name: np.empty(n_resamples) for name in metrics}
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        counts = ScoreCounts(values,
                             _resampled_counts(codes[neg_idx], neg_draws[start:stop], k),
                             _resampled_counts(codes[pos_idx], pos_draws[start:stop], k))
        for name, metric in metrics.items():
            out[name][start:stop] = metric.from_counts(counts)
    return out


def _plain_metric_replicates(
    scores: np.ndarray, neg_idx: np.ndarray, pos_idx: np.ndarray, neg_draws: np.ndarray, pos_draws: np.ndarray,
    metrics: Mapping[str, MetricFn],
) -> dict[str, np.ndarray]:
    """Replicates of plain metric functions, one call per resample."""
    n_resamples = neg_draws.shape[0]
    labels = np.concatenate([np.zeros(neg_idx.size, np.int64), np.ones(pos_idx.size, np.int64)])
    out = {name: np.empty(n_resamples) for name in metrics}
    for r in range(n_resamples):
        sample = scores[np.concatenate([neg_idx[neg_draws[r]], pos_idx[pos_draws[r]]])]
        for name, fn in metrics.items():
            out[name][r] = float(fn(sample, labels))
    return out


def stratified_bootstrap_ci(
    probs: Any,
    labels: Any,
    metric_fns: Mapping[str, MetricFn | CountMetric],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of metrics, resampling reals and fakes separately.

    Each resample draws ``n0`` reals from the ``n0`` reals and ``n1`` fakes from the
    ``n1`` fakes, with replacement, so the class balance of the evaluation set is kept
    (a stratified bootstrap; Efron & Tibshirani, 1993). The indices of all resamples
    are drawn at once from ``numpy.random.default_rng(seed)``, one ``(n_resamples, n_c)``
    array per class, so the same seed gives the same resamples for every metric.

    ``metric_fns`` maps names to ``fn(probs, labels) -> float`` (called once per
    resample; its labels are the reals first, then the fakes) or to
    :class:`CountMetric` objects (evaluated for blocks of resamples at once; see
    :func:`~experiments.evaluation.score_counts.standard_metrics`). A replicate that is NaN is ignored; a metric that is NaN
    on every resample gets ``(nan, nan)``. Returns ``{name: (low, high)}``.
    """
    scores, targets = finite_scores_and_labels(probs, labels)
    confidence = check_confidence(confidence)
    n_resamples = int(n_resamples)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    neg_idx, pos_idx = np.flatnonzero(targets == 0), np.flatnonzero(targets == 1)
    neg_draws = rng.integers(0, max(neg_idx.size, 1), size=(n_resamples, neg_idx.size))
    pos_draws = rng.integers(0, max(pos_idx.size, 1), size=(n_resamples, pos_idx.size))

    count_metrics = {name: fn for name, fn in metric_fns.items() if isinstance(fn, CountMetric)}
    plain_metrics = {name: fn for name, fn in metric_fns.items() if not isinstance(fn, CountMetric)}
    replicates: dict[str, np.ndarray] = {}
    if count_metrics:
        replicates.update(_count_metric_replicates(scores, neg_idx, pos_idx, neg_draws, pos_draws, count_metrics))
    if plain_metrics:
        replicates.update(_plain_metric_replicates(scores, neg_idx, pos_idx, neg_draws, pos_draws, plain_metrics))
    return {name: percentile_interval(replicates[name], confidence) for name in metric_fns}


def bootstrap_metric_cis(
    probs: Any,
    labels: Any,
    threshold: float,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Stratified bootstrap intervals of ``auc``, ``ap``, ``accuracy``, ``balanced_accuracy``,
    ``tpr_at_5fpr`` and ``eer`` (see :func:`~experiments.evaluation.score_counts.standard_metrics`), accuracies at ``prob >= threshold``.

    ``probs`` must be probabilities P(synthetic) in [0, 1], as for
    :func:`experiments.evaluation.metrics.binary_metrics`; the threshold should be the one chosen
    on the validation split.
    """
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    scores, targets = probabilities_and_labels(probs, labels)
    return stratified_bootstrap_ci(scores, targets, standard_metrics(threshold), n_resamples, confidence, seed)
