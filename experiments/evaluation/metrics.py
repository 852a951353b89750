"""Evaluation metrics for binary real-vs-synthetic detection.

Every function takes scores ``probs`` = P(synthetic) in ``[0, 1]`` and labels with
real = 0 and synthetic = 1, as numpy arrays, torch tensors or plain sequences.

Conventions
-----------
* A sample is predicted synthetic when ``prob >= threshold`` (the convention of a ROC
  operating point, as in scikit-learn's ``roc_curve``).
* Threshold-free metrics (``auc``, ``ap``, ``eer``, ``tpr_at_5fpr``) are undefined
  when only one class is present; they are reported as NaN, silently.
* Every count-based metric comes from the one engine of :mod:`experiments.evaluation.score_counts`
  (per-class counts of distinct scores), the engine the stratified bootstrap uses too, so a point
  estimate and its interval share one definition. The calibration error and the Brier score are
  means over the scores.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from experiments.evaluation.score_counts import (
    LOW_FPR,
    ScoreCounts,
    accuracy_from_counts,
    as_flat_numpy,
    auroc_from_counts,
    average_precision_from_counts,
    balanced_accuracy_from_counts,
    eer_from_counts,
    f1_from_counts,
    precision_from_counts,
    probabilities_and_labels,
    recall_from_counts,
    tpr_at_fpr_from_counts,
)

#: Number of equal-width bins of the expected calibration error.
ECE_BINS = 15

#: Key of the pooled entry in :func:`metrics_by_group`.
ALL_GROUPS = "all"

THRESHOLD_CRITERIA = ("youden", "eer", "balanced_accuracy")

_NAN = float("nan")


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------
def as_scores_and_labels(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and convert to a float64 score tensor and an int64 0/1 label tensor (both 1-D, CPU).

    Raises ``ValueError`` for mismatched lengths, scores outside ``[0, 1]`` (logits are
    not accepted) or labels other than 0/1
    (:func:`experiments.evaluation.score_counts.probabilities_and_labels`).
    """
    scores, targets = probabilities_and_labels(probs, labels)
    return torch.from_numpy(scores), torch.from_numpy(targets)


def _has_both_classes(targets: np.ndarray) -> bool:
    n_pos = int(targets.sum())
    return 0 < n_pos < targets.size


# ---------------------------------------------------------------------------
# ROC curve
# ---------------------------------------------------------------------------
def roc_points(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` as float64 numpy arrays, one point per distinct score.

    The curve runs from ``(0, 0)`` to ``(1, 1)``; point ``i`` predicts synthetic for
    ``prob >= thresholds[i]``, and ``thresholds[0]`` is the sentinel 1.0, at or above every
    score (all predicted real). The rates are exact ratios of integer counts. Raises
    ``ValueError`` when only one class is present.
    """
    scores, targets = probabilities_and_labels(probs, labels)
    if not _has_both_classes(targets):
        raise ValueError("a ROC curve needs both classes in labels")
    counts = ScoreCounts.from_scores(scores, targets)
    fpr, tpr = counts.roc
    return fpr[0], tpr[0], counts.roc_thresholds


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------
def reliability_bins(probs: Any, labels: Any, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Equal-width bins of P(synthetic) for reliability diagrams.

    Bin ``b`` holds scores in ``[b / n_bins, (b + 1) / n_bins)``; a score of exactly 1
    goes to the last bin. Returns ``edges`` (n_bins + 1,), and per bin ``count``,
    ``mean_prob`` (mean score) and ``frac_pos`` (fraction labelled synthetic); the
    last two are NaN for empty bins.
    """
    p, targets = probabilities_and_labels(probs, labels)
    y = targets.astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(index, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(index, weights=y, minlength=n_bins) / count
    return {"edges": edges, "count": count, "mean_prob": mean_prob, "frac_pos": frac_pos}


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of P(synthetic) with ``n_bins`` equal-width bins.

    ``ECE = sum_b (n_b / n) * |mean(y in b) - mean(p in b)|``: the L1 gap between the
    predicted probability of the *synthetic* class and the observed frequency of
    synthetic labels (Naeini et al., 2015; Guo et al., 2017, applied to the positive
    class), over the bins of :func:`reliability_bins`. NaN for empty input.
    """
    bins = reliability_bins(probs, labels, n_bins)
    n = bins["count"].sum()
    if n == 0:
        return _NAN
    filled = bins["count"] > 0
    gaps = np.abs(bins["frac_pos"][filled] - bins["mean_prob"][filled])
    return float(np.sum(bins["count"][filled] / n * gaps))


# ---------------------------------------------------------------------------
# the metric bundle
# ---------------------------------------------------------------------------
_METRIC_NAMES = ("accuracy", "f1", "precision", "recall", "balanced_accuracy", "auc", "ap", "eer",
                 "tpr_at_5fpr", "brier", "ece")


def binary_metrics(probs: Any, labels: Any, threshold: float = 0.5) -> dict[str, float]:
    """All evaluation metrics for P(synthetic) scores and 0/1 labels.

    Returns ``accuracy``, ``f1``, ``precision``, ``recall``, ``balanced_accuracy`` (at
    ``prob >= threshold``), ``auc`` (AUROC), ``ap`` (average precision), ``eer``
    (equal error rate), ``tpr_at_5fpr`` (TPR at FPR <= 5 %), ``brier`` (mean squared
    error of the probability), ``ece`` (see :func:`expected_calibration_error`), and
    the counts ``n``, ``n_pos``, ``n_neg`` and the ``threshold`` used, all as floats.
    Precision/F1 with no predicted positives are 0. With one class only, the
    threshold-free metrics are NaN; with no samples every metric is NaN.
    """
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    scores, targets = probabilities_and_labels(probs, labels)
    n = targets.size
    n_pos = int(targets.sum())
    result = {"n": float(n), "n_pos": float(n_pos), "n_neg": float(n - n_pos), "threshold": threshold}
    if n == 0:
        return {**dict.fromkeys(_METRIC_NAMES, _NAN), **result}

    counts = ScoreCounts.from_scores(scores, targets)
    metrics = {
        "accuracy": accuracy_from_counts(counts, threshold)[0],
        "f1": f1_from_counts(counts, threshold)[0],
        "precision": precision_from_counts(counts, threshold)[0],
        "recall": recall_from_counts(counts, threshold)[0],
        "balanced_accuracy": balanced_accuracy_from_counts(counts, threshold)[0],
        "auc": auroc_from_counts(counts)[0],
        "ap": average_precision_from_counts(counts)[0],
        "eer": eer_from_counts(counts)[0],
        "tpr_at_5fpr": tpr_at_fpr_from_counts(counts, LOW_FPR)[0],
        "brier": np.mean((scores - targets) ** 2),
        "ece": expected_calibration_error(scores, targets),
    }
    return {**{name: float(metrics[name]) for name in _METRIC_NAMES}, **result}


def _group_name(group_id: int, group_names: Mapping[int, str] | Sequence[str] | None) -> str:
    if group_names is None:
        return str(group_id)
    if isinstance(group_names, Mapping):
        return str(group_names.get(group_id, group_id))
    return str(group_names[group_id]) if 0 <= group_id < len(group_names) else str(group_id)


def _scores_labels_groups(probs: Any, labels: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, targets = probabilities_and_labels(probs, labels)
    group_ids = as_flat_numpy(groups).astype(np.int64)
    if group_ids.size != scores.size:
        raise ValueError(f"groups and probs differ in length: {group_ids.size} vs {scores.size}")
    return scores, targets, group_ids


def metrics_by_group(
    probs: Any,
    labels: Any,
    groups: Any,
    group_names: Mapping[int, str] | Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """:func:`binary_metrics` pooled (key ``"all"``) and for each group id present in ``groups``.

    ``groups`` holds one integer id per sample (e.g. the generator); ``group_names`` maps
    an id to its name (a mapping, or a sequence indexed by id); unnamed ids use ``str(id)``.
    Groups appear in ascending id order after ``"all"``.
    """
    scores, targets, group_ids = _scores_labels_groups(probs, labels, groups)
    result = {ALL_GROUPS: binary_metrics(scores, targets, threshold)}
    for group_id in np.unique(group_ids).tolist():
        name = _group_name(int(group_id), group_names)
        if name in result:
            raise ValueError(f"group name {name!r} is used twice (or clashes with {ALL_GROUPS!r})")
        mask = group_ids == group_id
        result[name] = binary_metrics(scores[mask], targets[mask], threshold)
    return result


def metrics_vs_all_reals(
    probs: Any,
    labels: Any,
    groups: Any,
    group_names: Mapping[int, str] | Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """:func:`binary_metrics` of each group's synthetic images against *every* real image of the split.

    :func:`metrics_by_group` scores a generator's fakes against that generator's own reals (in GenImage each
    generator folder has its own real images); here the negatives are the pooled reals of all groups, as a
    deployed detector meets them. Only groups with synthetic images get an entry; no ``"all"`` entry (the
    pooled metrics are the same in both views).
    """
    scores, targets, group_ids = _scores_labels_groups(probs, labels, groups)
    reals = targets == 0
    result: dict[str, dict[str, float]] = {}
    for group_id in np.unique(group_ids[targets == 1]).tolist():
        name = _group_name(int(group_id), group_names)
        mask = reals | ((group_ids == group_id) & (targets == 1))
        result[name] = binary_metrics(scores[mask], targets[mask], threshold)
    return result


# ---------------------------------------------------------------------------
# threshold selection
# ---------------------------------------------------------------------------
def calibrated_threshold(val_probs: Any, val_labels: Any, criterion: str = "youden") -> float:
    """Decision threshold chosen on validation scores, to be applied unchanged to test scores.

    Criteria, each evaluated at every ROC operating point of the validation set:

    * ``"youden"``: maximise Youden's J = TPR - FPR (Youden, 1950).
    * ``"balanced_accuracy"``: maximise (TPR + TNR) / 2 = (1 + J) / 2, hence the same
      operating point as ``"youden"``; kept as a name for configs that speak of it.
    * ``"eer"``: the point where FPR and FNR are closest (the equal-error operating point).

    Ties go to the highest threshold. The returned value lies halfway between the
    chosen score and the next lower distinct validation score, so the validation
    predictions are the same whether one predicts synthetic for ``p >= t`` or ``p > t``.
    With one class only there is nothing to calibrate: 0.5 is returned with a warning.
    """
    if criterion not in THRESHOLD_CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {THRESHOLD_CRITERIA}")
    scores, targets = probabilities_and_labels(val_probs, val_labels)
    if not _has_both_classes(targets):
        warnings.warn("calibrated_threshold needs both classes in the validation labels; using 0.5",
                      UserWarning, stacklevel=2)
        return 0.5
    fpr, tpr, thresholds = roc_points(scores, targets)
    if criterion in ("youden", "balanced_accuracy"):
        best = int(np.argmax(tpr - fpr))
    else:
        best = int(np.argmin(np.abs(fpr - (1.0 - tpr))))
    if best == 0:  # everything predicted real
        return float(min(1.0, thresholds[0]))
    next_lower = thresholds[best + 1] if best + 1 < len(thresholds) else 0.0
    return float((thresholds[best] + next_lower) / 2.0)


# ---------------------------------------------------------------------------
# flat names for experiment tracking
# ---------------------------------------------------------------------------
def sanitize_metric_component(name: str) -> str:
    """One path component of an MLflow metric name: characters outside ``[A-Za-z0-9_.-]`` become ``_``.

    Slashes are replaced too, so a group name never adds a path level; ``"."``, ``".."``
    and the empty string (rejected by MLflow's path check) become ``"_"``.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))
    return "_" if cleaned in ("", ".", "..") else cleaned


def flatten_metrics(
    nested: Mapping[str, Mapping[str, float]], prefix: str = "", drop_nan: bool = False
) -> dict[str, float]:
    """Flatten :func:`metrics_by_group` output into MLflow metric names.

    ``{"all": {"auc": a}, "ADM": {"auc": b}}`` with ``prefix="test"`` gives
    ``{"test/auc": a, "test/ADM/auc": b}``. Group and metric names are sanitised with
    :func:`sanitize_metric_component`; the prefix may itself contain ``/``. NaN values
    are kept unless ``drop_nan``. Raises ``ValueError`` if two entries map to one name.
    """
    prefix_parts = [sanitize_metric_component(part) for part in str(prefix).split("/") if part]
    flat: dict[str, float] = {}
    for group, metrics in nested.items():
        group_parts = [] if group == ALL_GROUPS else [sanitize_metric_component(group)]
        for metric, value in metrics.items():
            value = float(value)
            if drop_nan and math.isnan(value):
                continue
            key = "/".join([*prefix_parts, *group_parts, sanitize_metric_component(metric)])
            if key in flat:
                raise ValueError(f"metric name {key!r} produced twice; rename the groups")
            flat[key] = value
    return flat
