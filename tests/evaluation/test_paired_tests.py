"""DeLong, McNemar and Holm checked against their definitions and hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from experiments.evaluation.paired_tests import delong_test, holm_adjust, mcnemar_test


def _scores(seed: int, n: int = 400, ties: bool = True, pos_frac: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes in [0, 1]; rounding to 2 decimals creates many tied scores."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_frac).astype(np.int64)
    probs = np.clip(0.35 * labels + 0.65 * rng.random(n), 0.0, 1.0)
    return (np.round(probs, 2) if ties else probs), labels



# ---------------------------------------------------------------------------
# DeLong
# ---------------------------------------------------------------------------
def _delong_by_definition(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """DeLong et al. (1988) with explicit placement values: psi(X, Y) = 1, 1/2, 0 for X > Y, X = Y, X < Y."""
    def components(scores):
        x, y = scores[labels == 1], scores[labels == 0]
        psi = np.array([[1.0 if xi > yj else 0.5 if xi == yj else 0.0 for yj in y] for xi in x])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)  # theta, V10(X_i), V01(Y_j)

    theta_a, v10_a, v01_a = components(a)
    theta_b, v10_b, v01_b = components(b)
    m, n = v10_a.size, v01_a.size

    def s(u, v, theta_u, theta_v, k):
        return sum((ui - theta_u) * (vi - theta_v) for ui, vi in zip(u, v)) / (k - 1)

    var = (s(v10_a, v10_a, theta_a, theta_a, m) + s(v10_b, v10_b, theta_b, theta_b, m)
           - 2 * s(v10_a, v10_b, theta_a, theta_b, m)) / m \
        + (s(v01_a, v01_a, theta_a, theta_a, n) + s(v01_b, v01_b, theta_b, theta_b, n)
           - 2 * s(v01_a, v01_b, theta_a, theta_b, n)) / n
    z = (theta_a - theta_b) / math.sqrt(var)
    return theta_a, theta_b, math.sqrt(var), 2 * stats.norm.sf(abs(z))


@pytest.mark.parametrize("seed,n,pos_frac", [(0, 60, 0.5), (1, 90, 0.3), (2, 45, 0.7)])
def test_delong_matches_structural_components_definition(seed, n, pos_frac):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_frac).astype(np.int64)
    labels[:2], labels[2:4] = 0, 1
    a = np.round(rng.normal(size=n) + 1.0 * labels, 1)  # rounding: ties within and across classes
    b = np.round(0.6 * a + rng.normal(size=n) + 0.4 * labels, 1)
    result = delong_test(a, b, labels)
    auc_a, auc_b, se, p_value = _delong_by_definition(a, b, labels)
    assert result.auc_a == pytest.approx(auc_a, abs=1e-10)
    assert result.auc_b == pytest.approx(auc_b, abs=1e-10)
    assert result.se == pytest.approx(se, abs=1e-10)
    assert result.p_value == pytest.approx(p_value, abs=1e-10)
    assert result.auc_a == pytest.approx(skm.roc_auc_score(labels, a), abs=1e-12)


def test_delong_auc_of_hanley_mcneil_rating_data():
    """Hanley & McNeil (1982, Radiology 143:29-36), table 1: 109 CT images rated 1-5; area 0.893."""
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    ratings = np.concatenate([np.repeat(np.arange(1, 6), normal), np.repeat(np.arange(1, 6), abnormal)])
    labels = np.repeat([0, 1], [sum(normal), sum(abnormal)])
    result = delong_test(ratings, ratings, labels)
    assert round(result.auc_a, 3) == 0.893
    assert (result.diff, result.se, result.z, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_delong_is_antisymmetric_and_invariant_to_monotone_maps():
    probs_a, labels = _scores(14, n=200)
    probs_b = np.clip(probs_a + np.random.default_rng(14).normal(0, 0.15, 200), 0, 1)
    ab = delong_test(probs_a, probs_b, labels)
    ba = delong_test(probs_b, probs_a, labels)
    assert ba.diff == pytest.approx(-ab.diff) and ba.z == pytest.approx(-ab.z)
    assert ba.p_value == pytest.approx(ab.p_value)
    logits = delong_test(np.log(probs_a + 0.01) - np.log1p(0.01 - probs_a), probs_b, labels)
    assert logits.z == pytest.approx(ab.z, abs=1e-12)
    half = stats.norm.ppf(0.975) * ab.se
    assert (ab.ci_low, ab.ci_high) == pytest.approx((ab.diff - half, ab.diff + half))


def test_delong_rejects_at_nominal_rate_under_null_and_detects_a_real_difference():
    rng = np.random.default_rng(99)
    labels = np.repeat([0, 1], 100)
    null_p, alt_p = [], []
    for _ in range(300):
        shared = rng.normal(size=200)
        a = labels + 0.7 * shared + 0.7 * rng.normal(size=200)  # same AUC, correlated noise
        b = labels + 0.7 * shared + 0.7 * rng.normal(size=200)
        c = 0.4 * labels + 0.7 * shared + 0.7 * rng.normal(size=200)
        null_p.append(delong_test(a, b, labels).p_value)
        alt_p.append(delong_test(a, c, labels).p_value)
    assert 0.02 <= np.mean(np.array(null_p) < 0.05) <= 0.09
    assert np.mean(np.array(alt_p) < 0.05) > 0.8


def test_delong_needs_two_of_each_class():
    with pytest.raises(ValueError, match="two real and two synthetic"):
        delong_test([0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0, 1, 1])


# ---------------------------------------------------------------------------
# McNemar, Holm
# ---------------------------------------------------------------------------
def _paired(b: int, c: int, both: int = 7, neither: int = 3) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * b + [0] * c + [1] * both + [0] * neither, bool)
    other = np.array([0] * b + [1] * c + [1] * both + [0] * neither, bool)
    return a, other


def test_mcnemar_exact_hand_computed():
    result = mcnemar_test(*_paired(10, 2))
    assert (result.b, result.c, result.method) == (10, 2, "exact")
    # 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert result.p_value == pytest.approx(2 * 79 / 4096, abs=1e-15)
    assert result.p_value == pytest.approx(0.03857421875)
    assert mcnemar_test(*_paired(2, 10)).p_value == result.p_value


def test_mcnemar_chi_square_hand_computed():
    result = mcnemar_test(*_paired(30, 15))
    assert (result.b, result.c, result.method) == (30, 15, "chi2")
    assert result.statistic == pytest.approx(14 ** 2 / 45)  # (|30 - 15| - 1)^2 / 45 = 4.3556
    assert result.p_value == pytest.approx(0.036888, abs=1e-6)


def test_mcnemar_method_choice_and_edge_cases():
    assert mcnemar_test(*_paired(20, 4)).method == "exact"  # b + c = 24
    assert mcnemar_test(*_paired(20, 5)).method == "chi2"  # b + c = 25
    assert mcnemar_test(*_paired(30, 15), exact=True).p_value == pytest.approx(
        2 * stats.binom.cdf(15, 45, 0.5))
    assert mcnemar_test(*_paired(0, 0)).p_value == 1.0
    assert mcnemar_test(*_paired(6, 6)).p_value == 1.0
    assert mcnemar_test(*_paired(20, 20)).statistic == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_test([1, 0], [1])


def test_holm_hand_example():
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], atol=1e-15)


def test_holm_nan_cap_and_definition():
    adjusted = holm_adjust([0.3, float("nan"), 0.02, 0.5])
    np.testing.assert_allclose(adjusted, [0.6, float("nan"), 0.06, 0.6])
    np.testing.assert_allclose(holm_adjust([0.4, 0.6]), [0.8, 0.8])  # monotone: 0.6 * 1 is raised to 0.8
    np.testing.assert_allclose(holm_adjust([0.6, 0.7]), [1.0, 1.0])  # 2 * 0.6 is capped at 1
    p = np.random.default_rng(15).random(12) ** 3
    order = np.argsort(p)
    expected = np.empty(12)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (12 - rank) * p[i]))
        expected[i] = running
    np.testing.assert_allclose(holm_adjust(p), expected, rtol=0, atol=1e-15)
