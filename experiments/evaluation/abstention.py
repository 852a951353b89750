"""Abstention: a band of raw P(synthetic) in which a deployed detector answers ``unsure``.

Selective classification (Geifman & El-Yaniv, 2017, "Selective Classification for Deep Neural Networks",
NeurIPS): a classifier ``f`` is paired with a selection function ``g(x) = 1[kappa(x) > theta]`` on a confidence
rate ``kappa``; it answers where ``g = 1`` and abstains elsewhere. Its *coverage* is ``E[g]``, the share of
inputs it answers, and its *selective accuracy* the accuracy of ``f`` on those. For a target coverage ``c``,
``theta`` is the ``(1 - c)`` quantile of ``kappa`` on held-out (validation) data, so that a share ``c`` of it is
answered; no label enters the choice.

Here ``f`` is the decision ``p >= t`` at the run's operating threshold ``t``
(:mod:`experiments.evaluation.operating_point`) and ``kappa(x) = |p(x) - t|``: Geifman & El-Yaniv's
softmax-response confidence re-centred on the threshold actually used (at ``t = 0.5`` it is ``max(p, 1 - p) -
0.5``). The abstention band is then ``[t - theta, t + theta]`` on raw P(synthetic). A band can also be given as
it is (``eval.abstain=[low, high]``). An image abstains when ``low <= p <= high``.

Conventions as :mod:`experiments.evaluation.score_counts`: labels real = 0, synthetic = 1.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.evaluation.operating_point import BadDeploymentSetting
from experiments.evaluation.score_counts import CountMetric, ScoreCounts

#: key of the abstention band in a run's ``calibration.json``
ABSTAIN_KEY = "abstention"

_COVERAGE = re.compile(r"^coverage@(?P<share>[0-9]*\.?[0-9]+)$")
_NAN = float("nan")


@dataclass(frozen=True)
class AbstainSpec:
    """``eval.abstain``: a fixed band ``(low, high)`` on raw P(synthetic), or a target ``coverage`` fitted on val."""

    band: tuple[float, float] | None = None
    coverage: float | None = None

    @property
    def name(self) -> str:
        """The spec as written: ``coverage@0.9`` or ``[0.4, 0.6]``."""
        if self.coverage is not None:
            return f"coverage@{self.coverage:g}"
        return f"[{self.band[0]:g}, {self.band[1]:g}]"


def parse_abstain(spec: Any) -> AbstainSpec | None:
    """``None`` -> no abstention; ``[low, high]`` (0 <= low <= high <= 1) or ``"coverage@<share>"`` (share in
    (0, 1)) -> an :class:`AbstainSpec`; a :class:`BadDeploymentSetting` (a ``ValueError``) naming ``eval.abstain``
    for anything else."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "null", "none")):
        return None
    if isinstance(spec, str):
        match = _COVERAGE.match(spec.strip())
        if match is None:
            raise BadDeploymentSetting(f"eval.abstain={spec!r} is not understood; write null, [low, high] "
                             "(e.g. eval.abstain=[0.4,0.6]) or coverage@<share> (e.g. eval.abstain=coverage@0.9)")
        share = float(match.group("share"))
        if not 0.0 < share < 1.0:
            raise BadDeploymentSetting(f"eval.abstain={spec!r}: the coverage must lie in (0, 1)")
        return AbstainSpec(coverage=share)
    if isinstance(spec, Sequence) and len(spec) == 2:
        try:
            low, high = (float(v) for v in spec)
        except (TypeError, ValueError):
            low = high = _NAN
        if 0.0 <= low <= high <= 1.0:
            return AbstainSpec(band=(low, high))
    raise BadDeploymentSetting(f"eval.abstain={spec!r}: a band is [low, high] on P(synthetic) with "
                               "0 <= low <= high <= 1")


@dataclass(frozen=True)
class AbstentionBand:
    """The band ``[low, high]`` of raw P(synthetic) where the detector abstains, and how it was chosen."""

    low: float
    high: float
    spec: str
    fitted_on: str | None = None

    def abstains(self, scores: Any) -> np.ndarray:
        """Boolean mask: ``low <= score <= high``."""
        scores = np.asarray(scores, dtype=np.float64)
        return (scores >= self.low) & (scores <= self.high)

    def record(self) -> dict[str, Any]:
        """What a run stores under :data:`ABSTAIN_KEY`."""
        return {"spec": self.spec, "low": float(self.low), "high": float(self.high), "fitted_on": self.fitted_on}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AbstentionBand:
        """Rebuild from :meth:`record`."""
        return cls(float(record["low"]), float(record["high"]), str(record.get("spec", "")),
                   record.get("fitted_on"))


def coverage_band(val_scores: Any, threshold: float, coverage: float, split: str = "val") -> AbstentionBand:
    """The band ``[t - theta, t + theta]`` answering a share ``coverage`` of ``val_scores`` (Geifman & El-Yaniv,
    2017): ``theta`` is the ``(1 - coverage)`` quantile of ``|score - t|`` (linear interpolation), so the most
    uncertain ``1 - coverage`` of the val scores fall inside. Clipped to ``[0, 1]``."""
    scores = np.asarray(val_scores, dtype=np.float64).ravel()
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("no finite val score to fit eval.abstain=coverage@... on")
    theta = float(np.quantile(np.abs(scores - threshold), 1.0 - float(coverage)))
    return AbstentionBand(max(0.0, threshold - theta), min(1.0, threshold + theta), f"coverage@{coverage:g}", split)


def fit_band(spec: AbstainSpec, val_scores: Any, threshold: float, split: str = "val") -> AbstentionBand:
    """The band of ``spec``: fixed as given, or fitted on ``val_scores`` (:func:`coverage_band`)."""
    if spec.coverage is not None:
        return coverage_band(val_scores, threshold, spec.coverage, split)
    return AbstentionBand(spec.band[0], spec.band[1], spec.name)


# ---------------------------------------------------------------------------
# coverage and selective accuracy, for one sample or a block of bootstrap resamples
# ---------------------------------------------------------------------------
def _answered(counts: ScoreCounts, low: float, high: float) -> np.ndarray:
    return ~((counts.values >= low) & (counts.values <= high))


def coverage_from_counts(counts: ScoreCounts, low: float, high: float) -> np.ndarray:
    """(R,) share of images outside the band ``[low, high]`` (answered); NaN for an empty sample."""
    answered = _answered(counts, low, high)
    total = counts.n_neg + counts.n_pos
    kept = counts.neg[:, answered].sum(axis=1) + counts.pos[:, answered].sum(axis=1)
    return np.divide(kept, total, out=np.full_like(kept, _NAN), where=total > 0)


def selective_accuracy_from_counts(counts: ScoreCounts, low: float, high: float, threshold: float) -> np.ndarray:
    """(R,) accuracy of ``score >= threshold`` on the answered images only; NaN when none is answered."""
    answered = _answered(counts, low, high)
    synthetic = counts.values >= threshold
    right = counts.pos[:, answered & synthetic].sum(axis=1) + counts.neg[:, answered & ~synthetic].sum(axis=1)
    kept = counts.neg[:, answered].sum(axis=1) + counts.pos[:, answered].sum(axis=1)
    return np.divide(right, kept, out=np.full_like(right, _NAN), where=kept > 0)


def selective_metrics(band: AbstentionBand, threshold: float) -> dict[str, CountMetric]:
    """``coverage`` and ``selective_accuracy`` of ``band`` with the decision at ``threshold``, as count metrics
    that :func:`experiments.evaluation.bootstrap.stratified_bootstrap_ci` evaluates in blocks."""
    low, high, threshold = float(band.low), float(band.high), float(threshold)
    return {
        "coverage": CountMetric(functools.partial(coverage_from_counts, low=low, high=high), "coverage"),
        "selective_accuracy": CountMetric(functools.partial(selective_accuracy_from_counts, low=low, high=high,
                                                            threshold=threshold), "selective_accuracy"),
    }


def selective_rates(scores: Any, labels: Any, band: AbstentionBand, threshold: float) -> dict[str, float]:
    """``{"coverage": ..., "selective_accuracy": ...}`` of one sample."""
    if np.asarray(scores).size == 0:
        return {"coverage": math.nan, "selective_accuracy": math.nan}
    return {name: metric(scores, labels) for name, metric in selective_metrics(band, threshold).items()}
