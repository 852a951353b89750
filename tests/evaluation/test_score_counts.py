"""The one metric engine (per-class counts of distinct scores) checked against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from experiments.evaluation.metrics import binary_metrics
from experiments.evaluation.score_counts import (
    ScoreCounts,
    accuracy_from_counts,
    auroc_from_counts,
    average_precision_from_counts,
    balanced_accuracy_from_counts,
    eer_from_counts,
    f1_from_counts,
    precision_from_counts,
    recall_from_counts,
    tpr_at_fpr_from_counts,
)
from tests.evaluation.reference_metrics import sklearn_eer

EXACT = 1e-12


def _tied_scores(seed: int, n: int, pos_frac: float, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes in [0, 1], rounded so that many scores tie (across and within classes)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_frac).astype(np.int64)
    probs = np.clip(0.3 * labels + 0.7 * rng.random(n), 0.0, 1.0)
    return np.round(probs, decimals), labels


@pytest.mark.parametrize("seed,n,pos_frac,decimals,threshold", [
    (0, 400, 0.5, 2, 0.5), (1, 360, 0.5, 1, 0.5), (2, 250, 0.2, 2, 0.41), (3, 97, 0.8, 3, 0.6), (4, 30, 0.5, 1, 0.3),
])
def test_engine_matches_sklearn_on_tied_scores(seed, n, pos_frac, decimals, threshold):
    probs, labels = _tied_scores(seed, n, pos_frac, decimals)
    assert np.unique(probs).size < probs.size  # the set has ties
    counts = ScoreCounts.from_scores(probs, labels)
    preds = (probs >= threshold).astype(np.int64)
    fpr, tpr, _ = skm.roc_curve(labels, probs, drop_intermediate=False)
    engine = {
        "auc": auroc_from_counts(counts),
        "ap": average_precision_from_counts(counts),
        "accuracy": accuracy_from_counts(counts, threshold),
        "f1": f1_from_counts(counts, threshold),
        "precision": precision_from_counts(counts, threshold),
        "recall": recall_from_counts(counts, threshold),
        "balanced_accuracy": balanced_accuracy_from_counts(counts, threshold),
        "tpr_at_5fpr": tpr_at_fpr_from_counts(counts, 0.05),
        "eer": eer_from_counts(counts),
    }
    reference = {
        "auc": skm.roc_auc_score(labels, probs),
        "ap": skm.average_precision_score(labels, probs),
        "accuracy": skm.accuracy_score(labels, preds),
        "f1": skm.f1_score(labels, preds, zero_division=0),
        "precision": skm.precision_score(labels, preds, zero_division=0),
        "recall": skm.recall_score(labels, preds, zero_division=0),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, preds),
        "tpr_at_5fpr": tpr[fpr <= 0.05 + 1e-12].max(),
        "eer": sklearn_eer(probs, labels),
    }
    per_run = binary_metrics(probs, labels, threshold)
    for name, value in reference.items():
        assert engine[name].shape == (1,), name
        assert engine[name][0] == pytest.approx(value, abs=EXACT), name
        assert per_run[name] == engine[name][0], name  # the per-run metrics are the engine's
    assert per_run["brier"] == pytest.approx(skm.brier_score_loss(labels, probs), abs=EXACT)


def test_engine_scores_several_resamples_like_each_alone():
    """Rows of counts over one grid (the bootstrap's layout) score like sklearn on each resample."""
    probs, labels = _tied_scores(7, 200, 0.5, 2)
    rng = np.random.default_rng(1)
    values, codes = np.unique(probs, return_inverse=True)
    draws = [rng.integers(0, probs.size, probs.size) for _ in range(5)]
    neg = np.stack([np.bincount(codes[d][labels[d] == 0], minlength=values.size) for d in draws]).astype(float)
    pos = np.stack([np.bincount(codes[d][labels[d] == 1], minlength=values.size) for d in draws]).astype(float)
    counts = ScoreCounts(values, neg, pos)
    expected_auc = [skm.roc_auc_score(labels[d], probs[d]) for d in draws]
    expected_f1 = [skm.f1_score(labels[d], probs[d] >= 0.5) for d in draws]
    np.testing.assert_allclose(auroc_from_counts(counts), expected_auc, rtol=0, atol=EXACT)
    np.testing.assert_allclose(f1_from_counts(counts, 0.5), expected_f1, rtol=0, atol=EXACT)


def test_engine_with_one_class_or_no_prediction():
    probs = np.array([0.1, 0.2, 0.3])
    counts = ScoreCounts.from_scores(probs, np.zeros(3, np.int64))
    for fn in (auroc_from_counts, average_precision_from_counts, eer_from_counts, tpr_at_fpr_from_counts):
        assert math.isnan(fn(counts)[0]), fn.__name__
    # nothing predicted synthetic and no synthetic sample: precision, recall and F1 are 0, as in sklearn
    assert precision_from_counts(counts, 0.5)[0] == 0.0 == skm.precision_score([0, 0, 0], [0, 0, 0], zero_division=0)
    assert recall_from_counts(counts, 0.5)[0] == 0.0 and f1_from_counts(counts, 0.5)[0] == 0.0
    assert accuracy_from_counts(counts, 0.5)[0] == 1.0 and balanced_accuracy_from_counts(counts, 0.5)[0] == 1.0
