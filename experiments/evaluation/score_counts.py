"""The metric engine: binary detection metrics computed from per-class counts of distinct scores.

Conventions: scores are P(synthetic) (or any monotone score where a metric allows it), labels are
real = 0 and synthetic = 1, and a sample is predicted synthetic when ``score >= threshold`` (the
convention of a ROC operating point, as in scikit-learn's ``roc_curve``).

A set of scores is fully described, for every metric reported here, by how many reals and fakes sit at
each distinct score (:class:`ScoreCounts`). AUROC, average precision, the ROC curve and the thresholded
metrics are cumulative sums of these counts, as in the ROC construction of Fawcett (2006), "An
introduction to ROC analysis", Pattern Recognition Letters 27(8):861-874 (one point per distinct score).

This is the one engine of the suite: the per-run metrics of :mod:`experiments.evaluation.metrics` read
it for one sample (R = 1), and the stratified bootstrap of :mod:`experiments.evaluation.bootstrap` for a
block of R resamples at once. A bootstrap resample is a multiset of the original scores, so it is one row
of counts over the original score grid: 1000 resamples per metric and group cost a few cumulative sums,
where a per-call computation (sorting each resample, as torchmetrics or scikit-learn do) could not be
batched. Everything is float64, and the counts are integers, so the rates are exact ratios of counts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: False-positive rate at which ``tpr_at_5fpr`` is read.
LOW_FPR = 0.05

#: Threshold of the first ROC point (everything predicted real): at or above every probability, as
#: torchmetrics' ``binary_roc`` sets it.
ROC_SENTINEL = 1.0

_NAN = float("nan")


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------
def as_flat_numpy(values: Any) -> np.ndarray:
    """A tensor, array or sequence as a flat NumPy array (tensors detached and moved to the CPU)."""
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)


def _scores_and_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = as_flat_numpy(probs).astype(np.float64)
    targets = as_flat_numpy(labels).astype(np.float64)
    if scores.shape != targets.shape:
        raise ValueError(f"scores and labels differ in length: {scores.size} vs {targets.size}")
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (real) or 1 (synthetic)")
    return scores, targets.astype(np.int64)


def finite_scores_and_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float64 scores (any finite real) and int64 0/1 labels of equal length; ValueError otherwise."""
    scores, targets = _scores_and_labels(probs, labels)
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    return scores, targets


def probabilities_and_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float64 probabilities in ``[0, 1]`` and int64 0/1 labels of equal length; ValueError otherwise.

    Logits are not accepted: a metric at ``threshold = 0.5`` or a calibration error would silently
    mean something else on them.
    """
    scores, targets = _scores_and_labels(probs, labels)
    if scores.size and (np.isnan(scores).any() or scores.min() < 0 or scores.max() > 1):
        raise ValueError("probs must be probabilities P(synthetic) in [0, 1] without NaN (got logits?)")
    return scores, targets


# ---------------------------------------------------------------------------
# the counts
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
        ``score >= values[K - j]`` (see :attr:`roc_thresholds`). Scores of the grid
        absent from a sample repeat the previous point, which changes neither the TPR
        at a given FPR nor the equal error rate.
        """
        zeros = np.zeros((self.neg.shape[0], 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            fpr = np.concatenate([zeros, self.fp], axis=1) / self.n_neg[:, None]
            tpr = np.concatenate([zeros, self.tp], axis=1) / self.n_pos[:, None]
        return fpr, tpr

    @property
    def roc_thresholds(self) -> np.ndarray:
        """(K + 1,) threshold of each ROC point: :data:`ROC_SENTINEL`, then the distinct scores descending."""
        return np.concatenate([[ROC_SENTINEL], self.values[::-1]])

    def both_classes(self) -> np.ndarray:
        """(R,) whether each sample holds reals and fakes."""
        return (self.n_neg > 0) & (self.n_pos > 0)


# ---------------------------------------------------------------------------
# threshold-free metrics
# ---------------------------------------------------------------------------
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
    """(R,) highest TPR among ROC operating points with FPR <= ``max_fpr`` (no interpolation).

    This is the TPR of a threshold one could actually set; it is never optimistic. NaN without both classes.
    """
    fpr, tpr = counts.roc
    allowed = fpr <= max_fpr + 1e-12
    best = np.max(np.where(allowed, tpr, -np.inf), axis=1)
    return np.where(counts.both_classes(), best, _NAN)


def eer_from_counts(counts: ScoreCounts) -> np.ndarray:
    """(R,) equal error rate: the FPR where FPR = FNR (= 1 - TPR) on the piecewise-linear ROC.

    ``fpr - fnr`` grows monotonically from -1 to +1 along the curve; the crossing is found at
    the first point with FPR >= FNR and interpolated linearly from the point before.
    NaN without both classes.
    """
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


# ---------------------------------------------------------------------------
# metrics at a threshold
# ---------------------------------------------------------------------------
def confusion_from_counts(counts: ScoreCounts, threshold: float = 0.5) -> tuple[np.ndarray, ...]:
    """(R,) arrays ``(tp, fp, tn, fn)`` of predicting synthetic for ``score >= threshold``."""
    synthetic = counts.values >= threshold
    tp = counts.pos[:, synthetic].sum(axis=1)
    fp = counts.neg[:, synthetic].sum(axis=1)
    return tp, fp, counts.n_neg - fp, counts.n_pos - tp


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """``num / den``, and ``empty`` where ``den`` is 0."""
    return np.divide(num, den, out=np.full_like(num, empty, dtype=np.float64), where=den > 0)


def accuracy_from_counts(counts: ScoreCounts, threshold: float = 0.5) -> np.ndarray:
    """(R,) accuracy of predicting synthetic for ``score >= threshold``. NaN for an empty sample."""
    tp, _, tn, _ = confusion_from_counts(counts, threshold)
    return _ratio(tp + tn, counts.n_pos + counts.n_neg, _NAN)


def balanced_accuracy_from_counts(counts: ScoreCounts, threshold: float = 0.5) -> np.ndarray:
    """(R,) mean per-class recall over the classes present (as scikit-learn's ``balanced_accuracy_score``)."""
    tp, _, tn, _ = confusion_from_counts(counts, threshold)
    tpr, tnr = _ratio(tp, counts.n_pos, _NAN), _ratio(tn, counts.n_neg, _NAN)
    return np.where(counts.n_pos == 0, tnr, np.where(counts.n_neg == 0, tpr, (tpr + tnr) / 2.0))


def precision_from_counts(counts: ScoreCounts, threshold: float = 0.5) -> np.ndarray:
    """(R,) precision ``tp / (tp + fp)``; 0 when nothing is predicted synthetic."""
    tp, fp, _, _ = confusion_from_counts(counts, threshold)
    return _ratio(tp, tp + fp, 0.0)


def recall_from_counts(counts: ScoreCounts, threshold: float = 0.5) -> np.ndarray:
    """(R,) recall (TPR) ``tp / (tp + fn)``; 0 without synthetic samples."""
    tp, _, _, fn = confusion_from_counts(counts, threshold)
    return _ratio(tp, tp + fn, 0.0)


def f1_from_counts(counts: ScoreCounts, threshold: float = 0.5) -> np.ndarray:
    """(R,) F1 ``2 tp / (2 tp + fp + fn)``; 0 when there is neither a synthetic sample nor a synthetic prediction."""
    tp, fp, _, fn = confusion_from_counts(counts, threshold)
    return _ratio(2.0 * tp, 2.0 * tp + fp + fn, 0.0)


# ---------------------------------------------------------------------------
# metrics as objects the bootstrap evaluates in blocks
# ---------------------------------------------------------------------------
class CountMetric:
    """A metric that the bootstrap evaluates for a whole block of resamples at once.

    Wraps ``fn(counts: ScoreCounts) -> (R,) array``. Called as ``metric(probs, labels)``
    it scores one sample, like any plain metric function, so it can be passed to
    :func:`experiments.evaluation.bootstrap.stratified_bootstrap_ci` next to plain functions.
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
    (at ``prob >= threshold``), ``tpr_at_5fpr`` (at FPR <= ``max_fpr``) and ``eer``; the very functions
    :func:`experiments.evaluation.metrics.binary_metrics` reports."""
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

