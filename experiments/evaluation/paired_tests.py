"""Paired significance tests for comparing detectors scored on the same samples.

* :func:`delong_test`: paired test of two correlated ROC AUCs (DeLong, DeLong & Clarke-Pearson, 1988).
* :func:`mcnemar_test`: paired test of two detectors' accuracies (McNemar, 1947).
* :func:`holm_adjust`: Holm (1979) step-down adjustment for several comparisons.

Conventions are those of :mod:`experiments.evaluation.score_counts`: labels are real = 0 and synthetic = 1.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from experiments.evaluation.intervals import check_confidence
from experiments.evaluation.score_counts import as_flat_numpy, finite_scores_and_labels

_NAN = float("nan")


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
    confidence = check_confidence(confidence)
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
# multiple comparisons
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
