"""The stratified bootstrap and the count metrics it evaluates, checked against known answers."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from experiments.evaluation.bootstrap import bootstrap_metric_cis, stratified_bootstrap_ci
from experiments.evaluation.metrics import binary_metrics
from experiments.evaluation.score_counts import CountMetric, ScoreCounts, auroc_from_counts, standard_metrics
from tests.evaluation.reference_metrics import sklearn_eer

EXACT = 1e-9
#: Tolerance of the checks against experiments.evaluation.metrics (the same engine, so equal in fact).
FLOAT32 = 1e-6


def _scores(seed: int, n: int = 400, ties: bool = True, pos_frac: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes in [0, 1]; rounding to 2 decimals creates many tied scores."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_frac).astype(np.int64)
    probs = np.clip(0.35 * labels + 0.65 * rng.random(n), 0.0, 1.0)
    return (np.round(probs, 2) if ties else probs), labels


def fast_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """The standard metrics of one sample, each computed from that sample's own counts."""
    return {name: metric(probs, labels) for name, metric in standard_metrics(threshold).items()}


def auroc(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(auroc_from_counts(ScoreCounts.from_scores(probs, labels))[0])


def _sklearn_tpr_at_5fpr(probs: np.ndarray, labels: np.ndarray) -> float:
    fpr, tpr, _ = skm.roc_curve(labels, probs, drop_intermediate=False)
    return float(tpr[fpr <= 0.05 + 1e-12].max())


# ---------------------------------------------------------------------------
# fast metrics
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed,ties,threshold,pos_frac", [
    (0, True, 0.5, 0.5), (1, False, 0.5, 0.5), (2, True, 0.37, 0.3), (3, False, 0.61, 0.8), (4, True, 0.0, 0.5),
])
def test_fast_metrics_agree_with_metrics_module(seed, ties, threshold, pos_frac):
    probs, labels = _scores(seed, ties=ties, pos_frac=pos_frac)
    fast = fast_metrics(probs, labels, threshold)
    ref = binary_metrics(probs, labels, threshold)
    for name in ("balanced_accuracy", "tpr_at_5fpr", "eer"):
        assert fast[name] == pytest.approx(ref[name], abs=EXACT), name
    for name in ("auc", "ap", "accuracy"):
        assert fast[name] == pytest.approx(ref[name], abs=FLOAT32), name
    # float64 references from scikit-learn
    assert fast["auc"] == pytest.approx(skm.roc_auc_score(labels, probs), abs=EXACT)
    assert fast["ap"] == pytest.approx(skm.average_precision_score(labels, probs), abs=EXACT)
    assert fast["accuracy"] == pytest.approx(np.mean((probs >= threshold) == labels), abs=EXACT)
    assert fast["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels, probs >= threshold), abs=EXACT)


def test_fast_metrics_with_one_class_are_nan_like_metrics_module():
    probs = np.array([0.2, 0.7, 0.9])
    fast = fast_metrics(probs, np.ones(3, np.int64), 0.5)
    ref = binary_metrics(probs, np.ones(3, np.int64), 0.5)
    for name in ("auc", "ap", "tpr_at_5fpr", "eer"):
        assert math.isnan(fast[name]) and math.isnan(ref[name])
    assert fast["accuracy"] == pytest.approx(2 / 3) and fast["balanced_accuracy"] == pytest.approx(2 / 3)


def test_counts_of_several_samples_match_per_sample_metrics():
    """Rows of a ScoreCounts over a shared grid (some values absent from a row) score like each sample alone."""
    rng = np.random.default_rng(5)
    probs, labels = _scores(5, n=120)
    values, codes = np.unique(probs, return_inverse=True)
    rows = [rng.integers(0, probs.size, probs.size) for _ in range(4)]
    neg = np.stack([np.bincount(codes[r][labels[r] == 0], minlength=values.size) for r in rows]).astype(float)
    pos = np.stack([np.bincount(codes[r][labels[r] == 1], minlength=values.size) for r in rows]).astype(float)
    counts = ScoreCounts(values, neg, pos)
    for name, metric in standard_metrics(0.45).items():
        batch = metric.from_counts(counts)
        single = [fast_metrics(probs[r], labels[r], 0.45)[name] for r in rows]
        np.testing.assert_allclose(batch, single, rtol=0, atol=EXACT, err_msg=name)


def test_auroc_is_rank_invariant_and_matches_midrank_formula():
    probs, labels = _scores(6, n=300)
    ranks = stats.rankdata(probs)
    n1, n0 = labels.sum(), (1 - labels).sum()
    midrank_auc = (ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1)
    assert auroc(probs, labels) == pytest.approx(midrank_auc, abs=1e-12)
    assert auroc(np.log(probs + 1e-3) * 7 - 2, labels) == pytest.approx(midrank_auc, abs=1e-12)


# ---------------------------------------------------------------------------
# stratified bootstrap
# ---------------------------------------------------------------------------
def test_resamples_keep_each_class_and_its_count():
    probs, labels = _scores(7, n=90, ties=False, pos_frac=0.3)
    reals, fakes = set(probs[labels == 0]), set(probs[labels == 1])
    seen = []

    def check(sample, sample_labels):
        assert (sample_labels == 0).sum() == len(reals) and (sample_labels == 1).sum() == len(fakes)
        assert set(sample[sample_labels == 0]) <= reals and set(sample[sample_labels == 1]) <= fakes
        seen.append(len(set(sample)))
        return 0.0

    stratified_bootstrap_ci(probs, labels, {"check": check}, n_resamples=50)
    assert len(seen) == 50 and max(seen) < probs.size  # drawn with replacement: repeats occur


def test_count_metrics_and_plain_functions_give_the_same_intervals():
    """The vectorised path and a per-resample loop over independent implementations see the same resamples."""
    probs, labels = _scores(8, n=160, pos_frac=0.4)
    threshold = 0.47
    plain = {
        "auc": lambda p, y: skm.roc_auc_score(y, p),
        "ap": lambda p, y: skm.average_precision_score(y, p),
        "accuracy": lambda p, y: np.mean((p >= threshold) == y),
        "balanced_accuracy": lambda p, y: skm.balanced_accuracy_score(y, p >= threshold),
        "tpr_at_5fpr": _sklearn_tpr_at_5fpr,
        "eer": sklearn_eer,
    }
    fast = bootstrap_metric_cis(probs, labels, threshold, n_resamples=60, seed=3)
    slow = stratified_bootstrap_ci(probs, labels, plain, n_resamples=60, seed=3)
    assert list(fast) == list(plain)
    for name in plain:
        np.testing.assert_allclose(fast[name], slow[name], rtol=0, atol=EXACT, err_msg=name)


def test_bootstrap_is_seeded():
    probs, labels = _scores(9)
    first = bootstrap_metric_cis(probs, labels, 0.5, n_resamples=200, seed=11)
    assert bootstrap_metric_cis(probs, labels, 0.5, n_resamples=200, seed=11) == first
    assert bootstrap_metric_cis(probs, labels, 0.5, n_resamples=200, seed=12)["auc"] != first["auc"]


def _coverage(confidence: float, repeats: int = 200, n: int = 100, d: float = 1.0) -> float:
    """Fraction of bootstrap intervals that contain the true AUROC Phi(d / sqrt 2) of N(0, 1) vs N(d, 1) scores."""
    true_auc = stats.norm.cdf(d / math.sqrt(2.0))
    rng = np.random.default_rng(2024)
    labels = np.repeat([0, 1], n)
    metric = {"auc": CountMetric(auroc_from_counts)}
    hits = 0
    for repeat in range(repeats):
        scores = rng.normal(size=2 * n) + d * labels
        low, high = stratified_bootstrap_ci(scores, labels, metric, n_resamples=300, confidence=confidence,
                                            seed=repeat)["auc"]
        hits += low <= true_auc <= high
    return hits / repeats


def test_bootstrap_interval_covers_true_auroc_at_nominal_rate():
    assert 0.88 <= _coverage(0.95) <= 0.99
    assert 0.35 <= _coverage(0.50) <= 0.65  # a narrower interval must cover far less


def test_nan_replicates_are_ignored():
    probs, labels = _scores(10, n=80)
    kept = []

    def sometimes_nan(sample, sample_labels):
        value = float(np.mean(sample))
        if value > np.mean(probs):
            return float("nan")
        kept.append(value)
        return value

    cis = stratified_bootstrap_ci(probs, labels, {"m": sometimes_nan, "never": lambda p, y: float("nan")},
                                  n_resamples=200, confidence=0.9)
    assert 20 < len(kept) < 180
    np.testing.assert_allclose(cis["m"], np.quantile(kept, [0.05, 0.95]), rtol=0, atol=1e-12)
    assert all(math.isnan(v) for v in cis["never"])


def test_bootstrap_with_one_class_gives_nan_for_threshold_free_metrics():
    cis = bootstrap_metric_cis(np.array([0.1, 0.6, 0.8, 0.9]), np.zeros(4), 0.5, n_resamples=100)
    for name in ("auc", "ap", "tpr_at_5fpr", "eer"):
        assert all(math.isnan(v) for v in cis[name])
    assert 0.0 <= cis["accuracy"][0] <= cis["accuracy"][1] <= 1.0


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        bootstrap_metric_cis([0.1, 0.2], [0, 2], 0.5)
    with pytest.raises(ValueError, match="logits"):
        bootstrap_metric_cis([0.1, 1.2], [0, 1], 0.5)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_metric_cis([0.1, 0.2], [0, 1], 0.5, confidence=95)
    with pytest.raises(ValueError, match="threshold"):
        bootstrap_metric_cis([0.1, 0.2], [0, 1], 1.5)


def test_standard_bootstrap_is_fast_at_400_samples():
    probs, labels = _scores(12, n=400, ties=False)
    bootstrap_metric_cis(probs, labels, 0.5, n_resamples=10)  # warm-up
    start = time.perf_counter()
    bootstrap_metric_cis(probs, labels, 0.5, n_resamples=1000)
    assert time.perf_counter() - start < 1.0


@pytest.mark.slow
def test_standard_bootstrap_takes_seconds_at_10000_samples():
    probs, labels = _scores(13, n=10_000, ties=False)
    start = time.perf_counter()
    bootstrap_metric_cis(probs, labels, 0.5, n_resamples=1000)
    assert time.perf_counter() - start < 10.0
