"""Confidence intervals and paired significance tests for comparing detectors.

Conventions are those of :mod:`experiments.evaluation.metrics`: scores are P(synthetic), labels
are real = 0 and synthetic = 1, and a sample is predicted synthetic when
``prob >= threshold``.

* :func:`stratified_bootstrap_ci` and :func:`bootstrap_metric_cis`: percentile
  intervals from a bootstrap that resamples reals and fakes separately, so every
  resample keeps the class counts of the test set (Efron & Tibshirani, 1993,
  "An Introduction to the Bootstrap", ch. 13).
* :func:`delong_test`: paired test of two correlated ROC AUCs (DeLong, DeLong &
  Clarke-Pearson, 1988).
* :func:`mcnemar_test`: paired test of two detectors' accuracies (McNemar, 1947).
* :func:`holm_adjust`: Holm (1979) step-down adjustment for several comparisons.
* :func:`t_interval`: Student-t interval of a mean over training seeds.

The bootstrap evaluates the standard metrics without sorting each resample: every
resample is a multiset of the original scores, so it is fully described by how many
reals and fakes it holds at each distinct score (:class:`ScoreCounts`). AUROC,
average precision, the ROC curve and thresholded accuracies are cumulative sums of
these counts, computed for a whole block of resamples at once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from experiments.evaluation.metrics import LOW_FPR, as_scores_and_labels

#: A metric of one sample: ``fn(probs, labels) -> float``.
MetricFn = Callable[[np.ndarray, np.ndarray], float]

#: Largest number of (resample, distinct score) cells held in one block of count arrays.
_BLOCK_CELLS = 4_000_000

_NAN = float("nan")


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------
def as_flat_numpy(values: Any) -> np.ndarray:
    """A tensor, array or sequence as a flat NumPy array (tensors detached and moved to the CPU)."""
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)


def finite_scores_and_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float64 scores (any finite real) and int64 0/1 labels of equal length; ValueError otherwise."""
    scores = as_flat_numpy(probs).astype(np.float64)
    targets = as_flat_numpy(labels).astype(np.float64)
    if scores.shape != targets.shape:
        raise ValueError(f"scores and labels differ in length: {scores.size} vs {targets.size}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (real) or 1 (synthetic)")
    return scores, targets.astype(np.int64)


def _probabilities_and_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`experiments.evaluation.metrics.as_scores_and_labels` (scores in [0, 1]), as numpy arrays."""
    scores, targets = as_scores_and_labels(probs, labels)
    return scores.numpy(), targets.numpy()


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


# ---------------------------------------------------------------------------
# metrics from per-class counts of distinct scores
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreCounts:
    """How many reals and fakes sit at each distinct score, for R samples sharing one score grid.

    ``values`` (K,) are the distinct scores in ascending order; ``neg`` and ``pos``
    (R, K) count the real (label 0) and synthetic (label 1) samples at ``values[k]``
    in sample ``r``. A bootstrap resample is a multiset of the original scores, so it
    is exactly one row of such counts over the original score grid.
    """

    values: np.ndarray
    neg: np.ndarray
    pos: np.ndarray

    @classmethod
    def from_scores(cls, probs: Any, labels: Any) -> ScoreCounts:
        """Counts of one sample (R = 1)."""
        scores, targets = finite_scores_and_labels(probs, labels)
        values, codes = np.unique(scores, return_inverse=True)
        k = values.size
        neg = np.bincount(codes[targets == 0], minlength=k).astype(np.float64)
        pos = np.bincount(codes[targets == 1], minlength=k).astype(np.float64)
        return cls(values, neg[None, :], pos[None, :])

    @functools.cached_property
    def n_neg(self) -> np.ndarray:
        """(R,) number of reals in each sample."""
        return self.neg.sum(axis=1)

    @functools.cached_property
    def n_pos(self) -> np.ndarray:
        """(R,) number of fakes in each sample."""
        return self.pos.sum(axis=1)

    @functools.cached_property
    def fp(self) -> np.ndarray:
        """(R, K) reals with score >= threshold, thresholds in descending order."""
        return np.cumsum(self.neg[:, ::-1], axis=1)

    @functools.cached_property
    def tp(self) -> np.ndarray:
        """(R, K) fakes with score >= threshold, thresholds in descending order."""
        return np.cumsum(self.pos[:, ::-1], axis=1)

    @functools.cached_property
    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """ROC curves ``(fpr, tpr)``, each (R, K + 1), from (0, 0) to (1, 1).

        Point 0 predicts everything real; point ``j >= 1`` predicts synthetic for
        ``score >= values[K - j]``, as :func:`experiments.evaluation.metrics.roc_points`. Scores of
        the grid absent from a sample repeat the previous point, which changes neither
        the TPR at a given FPR nor the equal error rate.
        """
        zeros = np.zeros((self.neg.shape[0], 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            fpr = np.concatenate([zeros, self.fp], axis=1) / self.n_neg[:, None]
            tpr = np.concatenate([zeros, self.tp], axis=1) / self.n_pos[:, None]
        return fpr, tpr

    def both_classes(self) -> np.ndarray:
        """(R,) whether each sample holds reals and fakes."""
        return (self.n_neg > 0) & (self.n_pos > 0)


def auroc_from_counts(counts: ScoreCounts) -> np.ndarray:
    """(R,) AUROC as the Mann-Whitney statistic P(fake > real) + P(fake = real) / 2.

    Equal to the trapezoidal area under the ROC curve and to the midrank formula
    ``(sum of fakes' midranks - n1 (n1 + 1) / 2) / (n0 n1)`` (Hanley & McNeil, 1982).
    NaN without both classes.
    """
    pos_above = counts.n_pos[:, None] - np.cumsum(counts.pos, axis=1)
    wins = np.sum(counts.neg * (pos_above + 0.5 * counts.pos), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = wins / (counts.n_neg * counts.n_pos)
    return np.where(counts.both_classes(), auc, _NAN)


def average_precision_from_counts(counts: ScoreCounts) -> np.ndarray:
    """(R,) average precision ``sum_k (R_k - R_{k-1}) P_k`` over descending thresholds.

    The step-wise definition of scikit-learn's ``average_precision_score`` and
    torchmetrics' ``binary_average_precision`` (no interpolation). NaN without both classes.
    """
    tp, fp = counts.tp, counts.fp
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones_like(tp), where=predicted > 0)
    new_tp = counts.pos[:, ::-1]  # recall gained at each threshold, times n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.sum(new_tp * precision, axis=1) / counts.n_pos
    return np.where(counts.both_classes(), ap, _NAN)


def tpr_at_fpr_from_counts(counts: ScoreCounts, max_fpr: float = LOW_FPR) -> np.ndarray:
    """(R,) highest TPR among ROC points with FPR <= ``max_fpr``, as
    :func:`experiments.evaluation.metrics.tpr_at_fpr_from_roc`. NaN without both classes."""
    fpr, tpr = counts.roc
    allowed = fpr <= max_fpr + 1e-12
    best = np.max(np.where(allowed, tpr, -np.inf), axis=1)
    return np.where(counts.both_classes(), best, _NAN)


def eer_from_counts(counts: ScoreCounts) -> np.ndarray:
    """(R,) equal error rate, as :func:`experiments.evaluation.metrics.equal_error_rate_from_roc`:
    the first ROC point with FPR >= FNR, interpolated linearly from the point before.
    NaN without both classes."""
    fpr, tpr = counts.roc
    gap = fpr - (1.0 - tpr)
    with np.errstate(invalid="ignore"):
        i = np.argmax(gap >= 0, axis=1)[:, None]
    before = np.maximum(i - 1, 0)
    gap_i, gap_b = np.take_along_axis(gap, i, 1)[:, 0], np.take_along_axis(gap, before, 1)[:, 0]
    fpr_i, fpr_b = np.take_along_axis(fpr, i, 1)[:, 0], np.take_along_axis(fpr, before, 1)[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = -gap_b / (gap_i - gap_b)
        interpolated = fpr_b + t * (fpr_i - fpr_b)
    eer = np.where((gap_i == 0) | (i[:, 0] == 0), fpr_i, interpolated)
    return np.where(counts.both_classes(), eer, _NAN)


def _recalls_at(counts: ScoreCounts, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Correct fakes (score >= threshold), correct reals, and the per-class recalls (NaN for an absent class)."""
    synthetic = counts.values >= threshold
    tp = counts.pos[:, synthetic].sum(axis=1)
    tn = counts.neg[:, ~synthetic].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp, tn, tp / counts.n_pos, tn / counts.n_neg


def accuracy_from_counts(counts: ScoreCounts, threshold: float = 0.5) -> np.ndarray:
    """(R,) accuracy of predicting synthetic for ``score >= threshold``. NaN for an empty sample."""
    tp, tn, _, _ = _recalls_at(counts, threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (tp + tn) / (counts.n_pos + counts.n_neg)


def balanced_accuracy_from_counts(counts: ScoreCounts, threshold: float = 0.5) -> np.ndarray:
    """(R,) mean per-class recall over the classes present, as :func:`experiments.evaluation.metrics.binary_metrics`."""
    _, _, tpr, tnr = _recalls_at(counts, threshold)
    return np.where(counts.n_pos == 0, tnr, np.where(counts.n_neg == 0, tpr, (tpr + tnr) / 2.0))


class CountMetric:
    """A metric that the bootstrap evaluates for a whole block of resamples at once.

    Wraps ``fn(counts: ScoreCounts) -> (R,) array``. Called as ``metric(probs, labels)``
    it scores one sample, like any plain metric function, so it can be passed to
    :func:`stratified_bootstrap_ci` next to plain functions.
    """

    def __init__(self, fn: Callable[[ScoreCounts], np.ndarray], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "metric")

    def from_counts(self, counts: ScoreCounts) -> np.ndarray:
        """(R,) values for the R samples described by ``counts``."""
        return np.asarray(self.fn(counts), dtype=np.float64)

    def __call__(self, probs: Any, labels: Any) -> float:
        return float(self.from_counts(ScoreCounts.from_scores(probs, labels))[0])

    def __repr__(self) -> str:
        return f"CountMetric({self.name})"


def standard_metrics(threshold: float = 0.5, max_fpr: float = LOW_FPR) -> dict[str, CountMetric]:
    """The metrics reported with intervals: ``auc``, ``ap``, ``accuracy`` and ``balanced_accuracy``
    (at ``prob >= threshold``), ``tpr_at_5fpr`` (at FPR <= ``max_fpr``) and ``eer``; same
    definitions as :func:`experiments.evaluation.metrics.binary_metrics`."""
    threshold = float(threshold)
    return {
        "auc": CountMetric(auroc_from_counts, "auc"),
        "ap": CountMetric(average_precision_from_counts, "ap"),
        "accuracy": CountMetric(functools.partial(accuracy_from_counts, threshold=threshold), "accuracy"),
        "balanced_accuracy": CountMetric(
            functools.partial(balanced_accuracy_from_counts, threshold=threshold), "balanced_accuracy"),
        "tpr_at_5fpr": CountMetric(functools.partial(tpr_at_fpr_from_counts, max_fpr=max_fpr), "tpr_at_5fpr"),
        "eer": CountMetric(eer_from_counts, "eer"),
    }


def fast_metrics(probs: Any, labels: Any, threshold: float = 0.5) -> dict[str, float]:
    """The :func:`standard_metrics` of one sample, computed from its counts."""
    counts = ScoreCounts.from_scores(probs, labels)
    return {name: float(metric.from_counts(counts)[0]) for name, metric in standard_metrics(threshold).items()}


def auroc(probs: Any, labels: Any) -> float:
    """AUROC of one sample (see :func:`auroc_from_counts`); NaN without both classes."""
    return float(auroc_from_counts(ScoreCounts.from_scores(probs, labels))[0])


# ---------------------------------------------------------------------------
# stratified bootstrap
# ---------------------------------------------------------------------------
def percentile_interval(values: Any, confidence: float = 0.95) -> tuple[float, float]:
    """Central percentile interval of bootstrap replicates; NaN replicates are ignored.

    Returns ``(nan, nan)`` when every replicate is NaN.
    """
    confidence = _check_confidence(confidence)
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    if finite.size == 0:
        return _NAN, _NAN
    low, high = np.quantile(finite, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


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
    :func:`standard_metrics`). A replicate that is NaN is ignored; a metric that is NaN
    on every resample gets ``(nan, nan)``. Returns ``{name: (low, high)}``.
    """
    scores, targets = finite_scores_and_labels(probs, labels)
    confidence = _check_confidence(confidence)
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
    ``tpr_at_5fpr`` and ``eer`` (see :func:`standard_metrics`), accuracies at ``prob >= threshold``.

    ``probs`` must be probabilities P(synthetic) in [0, 1], as for
    :func:`experiments.evaluation.metrics.binary_metrics`; the threshold should be the one chosen
    on the validation split.
    """
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    scores, targets = _probabilities_and_labels(probs, labels)
    return stratified_bootstrap_ci(scores, targets, standard_metrics(threshold), n_resamples, confidence, seed)


# ---------------------------------------------------------------------------
# DeLong's test of two correlated AUCs
# ---------------------------------------------------------------------------
class DeLongResult(NamedTuple):
    """Paired comparison of two AUROCs on the same samples; ``diff = auc_a - auc_b``."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def delong_placements(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong placement values of ``k`` score vectors on the same samples.

    ``scores`` is (k, N); with ``m`` fakes (positives) and ``n`` reals, returns the
    (k,) AUCs, the (k, m) placements ``V10`` of the fakes (fraction of reals scored
    below each fake, ties counting 1/2) and the (k, n) placements ``V01`` of the reals
    (fraction of fakes scored above each real, ties counting 1/2). They come from
    midranks within each class and in the pooled sample, without the O(m n)
    comparison matrix (Sun & Xu, 2014).
    """
    pos, neg = scores[:, labels == 1], scores[:, labels == 0]
    m, n = pos.shape[1], neg.shape[1]
    pooled_ranks = stats.rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    pos_ranks = stats.rankdata(pos, method="average", axis=1)
    neg_ranks = stats.rankdata(neg, method="average", axis=1)
    aucs = (pooled_ranks[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (pooled_ranks[:, :m] - pos_ranks) / n
    v01 = 1.0 - (pooled_ranks[:, m:] - neg_ranks) / m
    return aucs, v10, v01


def delong_covariance(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k): ``S10 / m + S01 / n``, where
    ``S10`` and ``S01`` are the sample covariances of the placement values of the fakes
    and of the reals (DeLong, DeLong & Clarke-Pearson, 1988, eq. 2-4)."""
    aucs, v10, v01 = delong_placements(scores, labels)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def delong_test(probs_a: Any, probs_b: Any, labels: Any, confidence: float = 0.95) -> DeLongResult:
    """DeLong's paired test of ``AUC_a = AUC_b`` for two detectors scored on the same samples.

    The AUCs are Mann-Whitney statistics; their variances and covariance come from
    the structural components (placement values) of DeLong, DeLong & Clarke-Pearson
    (1988), "Comparing the areas under two or more correlated receiver operating
    characteristic curves: a nonparametric approach", Biometrics 44(3):837-845,
    computed with the midrank algorithm of Sun & Xu (2014), "Fast implementation of
    DeLong's algorithm for comparing the areas under correlated receiver operating
    characteristic curves", IEEE Signal Processing Letters 21(11):1389-1393. Ties
    count 1/2 (midranks).

    ``z = diff / se`` with ``diff = auc_a - auc_b``; the p-value is two-sided from the
    standard normal and ``(ci_low, ci_high)`` is the Wald interval of ``diff`` at
    ``confidence``. When ``se`` is 0 (e.g. identical scores), ``z`` is 0 and the p-value
    1 if ``diff`` is 0, else ``z`` is infinite and the p-value 0. Needs at least two
    reals and two fakes. Scores may be probabilities or any monotone score (logits).
    """
    confidence = _check_confidence(confidence)
    scores_a, targets = finite_scores_and_labels(probs_a, labels)
    scores_b, _ = finite_scores_and_labels(probs_b, labels)
    n_pos = int(targets.sum())
    if n_pos < 2 or targets.size - n_pos < 2:
        raise ValueError("delong_test needs at least two real and two synthetic samples")
    aucs, cov = delong_covariance(np.stack([scores_a, scores_b]), targets)
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0))
    if se > 0:
        z = diff / se
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    p_value = float(min(1.0, 2.0 * stats.norm.sf(abs(z))))
    half_width = float(stats.norm.ppf(0.5 + confidence / 2.0)) * se
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, z, p_value, diff - half_width, diff + half_width)


# ---------------------------------------------------------------------------
# McNemar's test of two paired accuracies
# ---------------------------------------------------------------------------
class McNemarResult(NamedTuple):
    """``b``: samples only detector A gets right; ``c``: only B gets right; ``method``: "exact" or "chi2"."""

    b: int
    c: int
    statistic: float
    p_value: float
    method: str


#: Below this number of discordant pairs, McNemar's test is exact by default.
MCNEMAR_EXACT_BELOW = 25


def mcnemar_test(correct_a: Any, correct_b: Any, exact: bool | None = None) -> McNemarResult:
    """McNemar's test that two detectors are equally accurate on the same samples.

    McNemar (1947), "Note on the sampling error of the difference between correlated
    proportions or percentages", Psychometrika 12(2):153-157. Only the discordant
    pairs matter: ``b`` samples that A classifies correctly and B does not, ``c`` the
    reverse; under the null each discordant pair goes either way with probability 1/2.

    * exact (default when ``b + c < 25``): two-sided binomial test,
      ``p = min(1, 2 P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``; the
      statistic is ``min(b, c)``.
    * otherwise: chi-square with one degree of freedom and the continuity correction
      of Edwards (1948), "Note on the 'correction for continuity' in testing the
      significance of the difference between correlated proportions", Psychometrika
      13(3):185-187: ``(|b - c| - 1)^2 / (b + c)`` (the correction is not allowed to
      exceed ``|b - c|``, so ``b = c`` gives 0).

    With no discordant pair the p-value is 1.
    """
    a = as_flat_numpy(correct_a).astype(bool)
    b_correct = as_flat_numpy(correct_b).astype(bool)
    if a.shape != b_correct.shape:
        raise ValueError(f"correct_a and correct_b differ in length: {a.size} vs {b_correct.size}")
    b = int(np.sum(a & ~b_correct))
    c = int(np.sum(~a & b_correct))
    discordant = b + c
    if exact is None:
        exact = discordant < MCNEMAR_EXACT_BELOW
    if discordant == 0:
        return McNemarResult(b, c, 0.0, 1.0, "exact" if exact else "chi2")
    if exact:
        p_value = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), discordant, 0.5)))
        return McNemarResult(b, c, float(min(b, c)), p_value, "exact")
    statistic = max(abs(b - c) - 1.0, 0.0) ** 2 / discordant
    return McNemarResult(b, c, statistic, float(stats.chi2.sf(statistic, df=1)), "chi2")


# ---------------------------------------------------------------------------
# multiple comparisons, seeds, formatting
# ---------------------------------------------------------------------------
def holm_adjust(p_values: Any) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (Holm, 1979, Scand. J. Statist. 6:65-70).

    With the ``m`` non-NaN p-values sorted ascending, ``p_(i)`` becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting where the adjusted value is
    <= alpha controls the family-wise error rate at alpha. NaNs stay NaN and do not
    count in ``m``. Returns the adjusted values in the input order.
    """
    p = np.asarray(p_values, dtype=np.float64)
    shape = p.shape
    p = p.reshape(-1)
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError("p-values must be in [0, 1]")
    adjusted = np.full_like(p, _NAN)
    kept = p[valid]
    m = kept.size
    if m:
        order = np.argsort(kept, kind="stable")
        scaled = np.minimum(1.0, (m - np.arange(m)) * kept[order])
        result = np.empty(m)
        result[order] = np.maximum.accumulate(scaled)
        adjusted[valid] = result
    return adjusted.reshape(shape)


def t_interval(values: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval of the mean of ``values`` (e.g. one metric over seeds).

    ``mean +- t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with the sample standard
    deviation ``s`` (ddof = 1). One value gives ``(value, nan, nan)``; no value raises.
    """
    confidence = _check_confidence(confidence)
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
