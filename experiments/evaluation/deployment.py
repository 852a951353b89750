"""What a deployed detector does at its operating point, with stratified bootstrap intervals.

The operating point is chosen on the validation split's real images only
(:mod:`experiments.evaluation.operating_point`); its abstention band, when there is one, on the same split
(:mod:`experiments.evaluation.abstention`). Both are then applied unchanged to the test split, and the rates
they give there get the suite's stratified percentile bootstrap (:func:`~experiments.evaluation.bootstrap
.stratified_bootstrap_ci`, Efron & Tibshirani, 1993, ch. 13: reals and fakes resampled separately, the
resamples of the run's seed), evaluated on the score counts of :mod:`experiments.evaluation.score_counts`.

Metric names (``prefix="test"``): ``op/threshold`` and ``op/target_fpr``; ``test/tpr_at_op``,
``test/fpr_at_op`` and ``test/fpr_drift_at_op`` (test FPR minus the target) pooled; ``test/<generator>/tpr_at_op``
per generator; with a band, ``op/abstain_low``, ``op/abstain_high``, ``test/coverage`` and
``test/selective_accuracy``. Each rate has ``_ci_low`` and ``_ci_high`` when intervals are asked for.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.evaluation.abstention import AbstainSpec, AbstentionBand, fit_band, selective_metrics
from experiments.evaluation.bootstrap import stratified_bootstrap_ci
from experiments.evaluation.metrics import ALL_GROUPS, flatten_metrics
from experiments.evaluation.operating_point import (
    OperatingPointSpec,
    operating_point_record,
    threshold_at_fpr,
)
from experiments.evaluation.predictions import BootstrapSettings, Predictions
from experiments.evaluation.score_counts import CountMetric, ScoreCounts, confusion_from_counts

_NAN = float("nan")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeploymentSettings:
    """``eval.operating_point`` (None: no operating point) and ``eval.abstain`` (None: always answer), parsed."""

    operating_point: OperatingPointSpec | None = None
    abstain: AbstainSpec | None = None


# ---------------------------------------------------------------------------
# rates at a threshold, as count metrics
# ---------------------------------------------------------------------------
def tpr_from_counts(counts: ScoreCounts, threshold: float) -> np.ndarray:
    """(R,) share of fakes with ``score >= threshold``; NaN without fakes."""
    tp, _, _, _ = confusion_from_counts(counts, threshold)
    return np.divide(tp, counts.n_pos, out=np.full_like(tp, _NAN), where=counts.n_pos > 0)


def fpr_from_counts(counts: ScoreCounts, threshold: float) -> np.ndarray:
    """(R,) share of reals with ``score >= threshold``; NaN without reals."""
    _, fp, _, _ = confusion_from_counts(counts, threshold)
    return np.divide(fp, counts.n_neg, out=np.full_like(fp, _NAN), where=counts.n_neg > 0)


def rate_metrics(threshold: float) -> dict[str, CountMetric]:
    """``tpr_at_op`` and ``fpr_at_op`` at ``threshold`` as count metrics."""
    threshold = float(threshold)
    return {"tpr_at_op": CountMetric(functools.partial(tpr_from_counts, threshold=threshold), "tpr_at_op"),
            "fpr_at_op": CountMetric(functools.partial(fpr_from_counts, threshold=threshold), "fpr_at_op")}


def with_intervals(scores: Any, labels: Any, metrics: Mapping[str, CountMetric],
                   bootstrap: BootstrapSettings | None = None) -> dict[str, float]:
    """``{name: value}`` of each metric on the sample, plus ``name_ci_low`` / ``name_ci_high`` from the stratified
    bootstrap of ``bootstrap`` (none when it is None or has 0 resamples). All NaN for an empty sample."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    want_ci = bootstrap is not None and bootstrap.resamples > 0
    if scores.size == 0:
        out = {name: _NAN for name in metrics}
        if want_ci:
            out.update({f"{name}_ci_{side}": _NAN for name in metrics for side in ("low", "high")})
        return out
    out = {name: metric(scores, labels) for name, metric in metrics.items()}
    if want_ci:
        cis = stratified_bootstrap_ci(scores, labels, metrics, bootstrap.resamples, bootstrap.confidence,
                                      bootstrap.seed)
        for name, (low, high) in cis.items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


def rates_at_threshold_by_group(scores: Any, labels: Any, groups: Any, threshold: float,
                                bootstrap: BootstrapSettings | None = None,
                                names: Mapping[Any, str] | None = None) -> dict[str, dict[str, float]]:
    """Per group (``names[group]`` or the group value as text): ``tpr_at_op`` and ``fpr_at_op`` of the images of
    that group at ``threshold``, each with its bootstrap interval (resampled within the group). A rate of a class
    the group lacks is NaN."""
    scores, labels, groups = (np.asarray(a).ravel() for a in (scores, labels, groups))
    out: dict[str, dict[str, float]] = {}
    for group in np.unique(groups).tolist():
        mask = groups == group
        name = str((names or {}).get(group, group))
        out[name] = with_intervals(scores[mask], labels[mask], rate_metrics(threshold), bootstrap)
    return out


def fpr_at_threshold_by_group(scores: Any, labels: Any, groups: Any, threshold: float,
                              bootstrap: BootstrapSettings | None = None,
                              names: Mapping[Any, str] | None = None) -> dict[str, dict[str, float]]:
    """Per group of *real* images (``groups`` is read for the reals only, e.g. their source): ``fpr_at_op`` (the
    share flagged synthetic at ``threshold``) with its bootstrap interval."""
    scores, labels, groups = (np.asarray(a).ravel() for a in (scores, labels, groups))
    reals = labels == 0
    by_group = rates_at_threshold_by_group(scores[reals], labels[reals], groups[reals], threshold, bootstrap, names)
    return {name: {k: v for k, v in rates.items() if k.startswith("fpr_at_op")} for name, rates in by_group.items()}


# ---------------------------------------------------------------------------
# a run's operating point and band: fitted on val, reported on test
# ---------------------------------------------------------------------------
def fit_operating_point(val: Predictions, spec: OperatingPointSpec, split: str = "val") -> dict[str, Any]:
    """The operating point record (:func:`~experiments.evaluation.operating_point.operating_point_record`) of
    ``spec`` on the real images of ``val`` alone; a ``ValueError`` when val holds no real image."""
    reals = val.prob[val.label == 0]
    return operating_point_record(spec, threshold_at_fpr(reals, spec.target_fpr), int(reals.size), split)


def fit_abstention(val: Predictions, spec: AbstainSpec | None, threshold: float,
                   split: str = "val") -> AbstentionBand | None:
    """The band of ``spec`` (fixed, or fitted on every val score around ``threshold``); None without a spec."""
    return None if spec is None else fit_band(spec, val.prob, threshold, split)


def fit_deployment(val: Predictions, settings: DeploymentSettings,
                   split: str = "val") -> tuple[dict[str, Any] | None, AbstentionBand | None]:
    """The operating point record and abstention band of ``settings`` fitted on ``val``; ``(None, None)``, with a
    warning, when there is no operating point (``eval.operating_point=null``, or a val split without reals)."""
    if settings.operating_point is None:
        if settings.abstain is not None:
            log.warning("eval.abstain=%s needs an operating point to decide at: set eval.operating_point",
                        settings.abstain.name)
        return None, None
    try:
        record = fit_operating_point(val, settings.operating_point, split)
    except ValueError as err:
        log.warning("no operating point for this run (%s)", err)
        return None, None
    return record, fit_abstention(val, settings.abstain, record["threshold"], split)


def operating_point_metrics(test: Predictions, threshold: float, target_fpr: float,
                            band: AbstentionBand | None = None, bootstrap: BootstrapSettings | None = None,
                            prefix: str = "test") -> dict[str, float]:
    """The flat metrics of the module docstring for ``test`` at ``threshold`` (and ``band``)."""
    pooled_metrics = dict(rate_metrics(threshold))
    if band is not None:
        pooled_metrics.update(selective_metrics(band, threshold))
    pooled = with_intervals(test.prob, test.label, pooled_metrics, bootstrap)
    for suffix in ("", "_ci_low", "_ci_high"):
        if f"fpr_at_op{suffix}" in pooled:
            pooled[f"fpr_drift_at_op{suffix}"] = pooled[f"fpr_at_op{suffix}"] - float(target_fpr)
    nested: dict[str, dict[str, float]] = {ALL_GROUPS: pooled}
    names = dict(enumerate(test.generator_names))
    for group, rates in rates_at_threshold_by_group(test.prob, test.label, test.generator, threshold, bootstrap,
                                                    names).items():
        if group in nested:
            raise ValueError(f"generator name {group!r} clashes with {ALL_GROUPS!r}")
        nested[group] = {k: v for k, v in rates.items() if k.startswith("tpr_at_op")}
    out = {"op/threshold": float(threshold), "op/target_fpr": float(target_fpr)}
    if band is not None:
        out.update({"op/abstain_low": float(band.low), "op/abstain_high": float(band.high)})
    out.update(flatten_metrics(nested, prefix))
    return out


def deployment_summary(metrics: Mapping[str, float], prefix: str = "test") -> list[str]:
    """Console lines of the operating point metrics in ``metrics`` (empty when there are none)."""
    if "op/threshold" not in metrics:
        return []

    def cell(name: str) -> str:
        value = metrics.get(f"{prefix}/{name}", _NAN)
        low, high = metrics.get(f"{prefix}/{name}_ci_low"), metrics.get(f"{prefix}/{name}_ci_high")
        if low is None or high is None or math.isnan(low) or math.isnan(high):
            return f"{value:.4f}"
        return f"{value:.4f} [{low:.4f}, {high:.4f}]"

    lines = [f"operating point fpr@{metrics['op/target_fpr']:g} (threshold {metrics['op/threshold']:.4f} on raw "
             f"P(synthetic), chosen on val reals): {prefix} TPR {cell('tpr_at_op')}, FPR {cell('fpr_at_op')} "
             f"(drift {metrics.get(f'{prefix}/fpr_drift_at_op', _NAN):+.4f})"]
    if "op/abstain_low" in metrics:
        lines.append(f"abstention band [{metrics['op/abstain_low']:.4f}, {metrics['op/abstain_high']:.4f}]: "
                     f"{prefix} coverage {cell('coverage')}, selective accuracy {cell('selective_accuracy')}")
    return lines
