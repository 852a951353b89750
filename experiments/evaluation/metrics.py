"""Evaluation metrics for binary real-vs-synthetic detection.

Every function takes scores ``probs`` = P(synthetic) in ``[0, 1]`` and labels with
real = 0 and synthetic = 1, as numpy arrays, torch tensors or plain sequences.

Conventions
-----------
* A sample is predicted synthetic when ``prob >= threshold`` (the convention of a ROC
  operating point, as in scikit-learn's ``roc_curve``).
* Threshold-free metrics (``auc``, ``ap``, ``eer``, ``tpr_at_5fpr``) are undefined
  when only one class is present; they are reported as NaN, silently.
* Metrics come from ``torchmetrics.functional`` where it offers them. The equal error
  rate and the TPR at a fixed FPR are read off ``binary_roc``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_roc,
)

#: Number of equal-width bins of the expected calibration error.
ECE_BINS = 15

#: False-positive rate at which ``tpr_at_5fpr`` is read.
LOW_FPR = 0.05

#: Key of the pooled entry in :func:`metrics_by_group`.
ALL_GROUPS = "all"

THRESHOLD_CRITERIA = ("youden", "eer", "balanced_accuracy")

_NAN = float("nan")


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------
def _as_1d_tensor(values: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.detach().cpu()
    else:
        tensor = torch.as_tensor(np.asarray(values))
    return tensor.reshape(-1).to(dtype)


def as_scores_and_labels(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and convert to a float64 score tensor and an int64 0/1 label tensor (both 1-D, CPU).

    Raises ``ValueError`` for mismatched lengths, scores outside ``[0, 1]`` (logits are
    not accepted: torchmetrics would silently pass them through a sigmoid) or labels
    other than 0/1.
    """
    scores = _as_1d_tensor(probs, torch.float64)
    targets = _as_1d_tensor(labels, torch.float64)
    if scores.numel() != targets.numel():
        raise ValueError(f"probs and labels differ in length: {scores.numel()} vs {targets.numel()}")
    if scores.numel() and (torch.isnan(scores).any() or scores.min() < 0 or scores.max() > 1):
        raise ValueError("probs must be probabilities P(synthetic) in [0, 1] without NaN (got logits?)")
    if targets.numel() and not torch.isin(targets, torch.tensor([0.0, 1.0], dtype=torch.float64)).all():
        raise ValueError("labels must be 0 (real) or 1 (synthetic)")
    return scores, targets.long()


def _has_both_classes(targets: torch.Tensor) -> bool:
    n_pos = int(targets.sum())
    return 0 < n_pos < targets.numel()


# ---------------------------------------------------------------------------
# ROC-derived metrics
# ---------------------------------------------------------------------------
def roc_points(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` as float64 numpy arrays, from torchmetrics' ``binary_roc``.

    The curve runs from ``(0, 0)`` to ``(1, 1)``; point ``i`` predicts synthetic for
    ``prob >= thresholds[i]``, and ``thresholds[0]`` is a sentinel above every score
    (all predicted real). Raises ``ValueError`` when only one class is present.
    """
    scores, targets = as_scores_and_labels(probs, labels)
    if not _has_both_classes(targets):
        raise ValueError("a ROC curve needs both classes in labels")
    fpr, tpr, thresholds = binary_roc(scores, targets)
    # Rebuild the rates from integer counts so that they are exact in float64
    # (torchmetrics divides in float32, e.g. 1/20 -> 0.0500000007 > 0.05).
    n_pos = int(targets.sum())
    n_neg = targets.numel() - n_pos
    fp = np.rint(fpr.double().numpy() * n_neg)
    tp = np.rint(tpr.double().numpy() * n_pos)
    return fp / n_neg, tp / n_pos, thresholds.double().numpy()


def equal_error_rate_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: the FPR where FPR = FNR (= 1 - TPR) on the piecewise-linear ROC.

    ``fpr - fnr`` grows monotonically from -1 to +1 along the curve; the crossing is
    found between the two points that bracket it and interpolated linearly.
    """
    gap = fpr - (1.0 - tpr)
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0 or i == 0:
        return float(fpr[i])
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr_from_roc(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float = LOW_FPR) -> float:
    """Highest TPR among ROC operating points with FPR <= ``max_fpr`` (no interpolation).

    This is the TPR of a threshold one could actually set; it is never optimistic.
    """
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def equal_error_rate(probs: Any, labels: Any) -> float:
    """Equal error rate (see :func:`equal_error_rate_from_roc`); NaN with one class only."""
    scores, targets = as_scores_and_labels(probs, labels)
    if not _has_both_classes(targets):
        return _NAN
    fpr, tpr, _ = roc_points(scores, targets)
    return equal_error_rate_from_roc(fpr, tpr)


def tpr_at_fpr(probs: Any, labels: Any, max_fpr: float = LOW_FPR) -> float:
    """TPR at FPR <= ``max_fpr`` (see :func:`tpr_at_fpr_from_roc`); NaN with one class only."""
    scores, targets = as_scores_and_labels(probs, labels)
    if not _has_both_classes(targets):
        return _NAN
    fpr, tpr, _ = roc_points(scores, targets)
    return tpr_at_fpr_from_roc(fpr, tpr, max_fpr)


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
    scores, targets = as_scores_and_labels(probs, labels)
    p = scores.numpy()
    y = targets.numpy().astype(np.float64)
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
    class). Computed with torchmetrics' ``binary_calibration_error(norm="l1")``.
    NaN for empty input.
    """
    scores, targets = as_scores_and_labels(probs, labels)
    if scores.numel() == 0:
        return _NAN
    return float(binary_calibration_error(scores, targets, n_bins=n_bins, norm="l1"))


# ---------------------------------------------------------------------------
# the metric bundle
# ---------------------------------------------------------------------------
def _balanced_accuracy(preds: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean per-class recall over the classes present in ``targets`` (as scikit-learn does)."""
    recalls = []
    for cls in (0, 1):
        mask = targets == cls
        if mask.any():
            recalls.append(float((preds[mask] == cls).double().mean()))
    return float(np.mean(recalls))


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
    scores, targets = as_scores_and_labels(probs, labels)
    n = targets.numel()
    n_pos = int(targets.sum())
    result = {"n": float(n), "n_pos": float(n_pos), "n_neg": float(n - n_pos), "threshold": threshold}
    names = ("accuracy", "f1", "precision", "recall", "balanced_accuracy", "auc", "ap", "eer",
             "tpr_at_5fpr", "brier", "ece")
    if n == 0:
        return {**dict.fromkeys(names, _NAN), **result}

    preds = (scores >= threshold).long()  # integer predictions are not re-thresholded
    metrics = {
        "accuracy": float(binary_accuracy(preds, targets)),
        "f1": float(binary_f1_score(preds, targets)),
        "precision": float(binary_precision(preds, targets)),
        "recall": float(binary_recall(preds, targets)),
        "balanced_accuracy": _balanced_accuracy(preds, targets),
        "brier": float(torch.mean((scores - targets.double()) ** 2)),
        "ece": expected_calibration_error(scores, targets),
    }
    if _has_both_classes(targets):
        fpr, tpr, _ = roc_points(scores, targets)
        metrics.update(
            auc=float(binary_auroc(scores, targets)),
            ap=float(binary_average_precision(scores, targets)),
            eer=equal_error_rate_from_roc(fpr, tpr),
            tpr_at_5fpr=tpr_at_fpr_from_roc(fpr, tpr, LOW_FPR),
        )
    else:
        metrics.update(auc=_NAN, ap=_NAN, eer=_NAN, tpr_at_5fpr=_NAN)
    return {**{name: metrics[name] for name in names}, **result}


def _group_name(group_id: int, group_names: Mapping[int, str] | Sequence[str] | None) -> str:
    if group_names is None:
        return str(group_id)
    if isinstance(group_names, Mapping):
        return str(group_names.get(group_id, group_id))
    return str(group_names[group_id]) if 0 <= group_id < len(group_names) else str(group_id)


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
    scores, targets = as_scores_and_labels(probs, labels)
    group_ids = _as_1d_tensor(groups, torch.int64)
    if group_ids.numel() != scores.numel():
        raise ValueError(f"groups and probs differ in length: {group_ids.numel()} vs {scores.numel()}")
    result = {ALL_GROUPS: binary_metrics(scores, targets, threshold)}
    for group_id in torch.unique(group_ids).tolist():
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
    scores, targets = as_scores_and_labels(probs, labels)
    group_ids = _as_1d_tensor(groups, torch.int64)
    if group_ids.numel() != scores.numel():
        raise ValueError(f"groups and probs differ in length: {group_ids.numel()} vs {scores.numel()}")
    reals = targets == 0
    result: dict[str, dict[str, float]] = {}
    for group_id in torch.unique(group_ids[targets == 1]).tolist():
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
    scores, targets = as_scores_and_labels(val_probs, val_labels)
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
