"""Metrics checked against scikit-learn and small reference computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from experiments.evaluation.metrics import (
    binary_metrics,
    calibrated_threshold,
    expected_calibration_error,
    flatten_metrics,
    metrics_by_group,
    reliability_bins,
)
from experiments.evaluation.score_counts import ScoreCounts, tpr_at_fpr_from_counts
from tests.evaluation.reference_metrics import sklearn_eer

TOL = 1e-6


def _scores(seed: int = 0, n: int = 400, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes; rounding to 2 decimals creates many tied scores."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = np.clip(0.35 * labels + 0.65 * rng.random(n), 0.0, 1.0)
    return (np.round(probs, 2) if ties else probs), labels


def _reference_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    index = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(labels[mask].mean() - probs[mask].mean())
    return total


@pytest.mark.parametrize("seed,ties,threshold", [(0, True, 0.5), (1, False, 0.5), (2, True, 0.37)])
def test_binary_metrics_match_sklearn(seed, ties, threshold):
    probs, labels = _scores(seed, ties=ties)
    preds = (probs >= threshold).astype(int)
    m = binary_metrics(probs, labels, threshold=threshold)
    expected = {
        "accuracy": skm.accuracy_score(labels, preds),
        "f1": skm.f1_score(labels, preds),
        "precision": skm.precision_score(labels, preds),
        "recall": skm.recall_score(labels, preds),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, preds),
        "auc": skm.roc_auc_score(labels, probs),
        "ap": skm.average_precision_score(labels, probs),
        "brier": skm.brier_score_loss(labels, probs),
        "eer": sklearn_eer(probs, labels),
        "ece": _reference_ece(probs, labels),
    }
    fpr, tpr, _ = skm.roc_curve(labels, probs)
    expected["tpr_at_5fpr"] = tpr[fpr <= 0.05].max()
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, abs=TOL), name
    assert m["n"] == len(labels)
    assert m["n_pos"] == labels.sum()
    assert m["n_neg"] == len(labels) - labels.sum()
    assert m["threshold"] == threshold


def test_hand_computed_example():
    # Sorted descending: 0.9(1) 0.8(1) 0.7(0) 0.6(1) 0.4(0) 0.3(1) 0.2(0) 0.1(0)
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 0, 1, 0, 1, 0, 0])
    m = binary_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["auc"] == pytest.approx(13 / 16)
    # ROC: (0,.25) (0,.5) (.25,.5) (.25,.75) (.5,.75) ... EER crossing lies on the
    # vertical segment at fpr = .25 between tpr .5 and .75.
    assert m["eer"] == pytest.approx(0.25)
    # With 4 negatives, FPR <= 5 % means no false positive at all: TPR 2/4.
    assert m["tpr_at_5fpr"] == pytest.approx(0.5)


def test_tpr_at_fpr_counts_boundary_exactly():
    # 20 negatives: exactly one false positive is FPR = 1/20 = 0.05, which is allowed.
    labels = np.array([0] * 20 + [1] * 10)
    probs = np.concatenate([np.linspace(0.0, 0.5, 19), [0.95], np.linspace(0.6, 1.0, 10)])
    fpr, tpr, _ = skm.roc_curve(labels, probs)
    m = binary_metrics(probs, labels)
    assert m["tpr_at_5fpr"] == pytest.approx(tpr[fpr <= 0.05].max())
    assert m["tpr_at_5fpr"] == pytest.approx(1.0)
    # Positives above the negative at 0.95 are 1.0 and 0.9556: TPR 2/10 with no false positive.
    assert tpr_at_fpr_from_counts(ScoreCounts.from_scores(probs, labels), 0.0)[0] == pytest.approx(0.2)
    assert m["eer"] == pytest.approx(sklearn_eer(probs, labels))


def test_torch_inputs_give_the_same_numbers():
    probs, labels = _scores(3)
    from_numpy = binary_metrics(probs, labels)
    from_torch = binary_metrics(torch.tensor(probs, dtype=torch.float32), torch.tensor(labels))
    for name, value in from_numpy.items():
        assert from_torch[name] == pytest.approx(value, abs=1e-5), name


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_without_warnings(label):
    probs = np.linspace(0.05, 0.95, 30)
    labels = np.full(30, label)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(probs, labels)
    for name in ("auc", "ap", "eer", "tpr_at_5fpr"):
        assert math.isnan(m[name]), name
    preds = (probs >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(labels, probs, labels=[0, 1]))
    assert not math.isnan(m["ece"])


def test_invalid_scores_are_rejected():
    with pytest.raises(ValueError):
        binary_metrics(np.array([-1.0, 2.0]), np.array([0, 1]))
    with pytest.raises(ValueError):
        binary_metrics(np.array([0.2, 0.7]), np.array([0, 2]))


def test_ece_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    labels = (rng.random(20000) < p).astype(int)
    calibrated = expected_calibration_error(p, labels)
    assert calibrated < 0.02
    assert calibrated == pytest.approx(_reference_ece(p, labels), abs=TOL)

    logit = np.log(p / (1 - p))
    overconfident = 1 / (1 + np.exp(-4.0 * logit))
    assert expected_calibration_error(overconfident, labels) > 0.1
    assert binary_metrics(overconfident, labels)["ece"] > 0.1


def test_reliability_bins():
    probs = np.array([0.0, 0.05, 0.1, 0.55, 1.0])
    labels = np.array([0, 0, 1, 1, 1])
    bins = reliability_bins(probs, labels, n_bins=10)
    np.testing.assert_allclose(bins["count"], [2, 1, 0, 0, 0, 1, 0, 0, 0, 1])
    assert bins["frac_pos"][0] == 0 and bins["frac_pos"][1] == 1
    assert bins["mean_prob"][0] == pytest.approx(0.025)
    assert math.isnan(bins["mean_prob"][2])


def _shifted_toy(seed: int, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """A detector whose scores all sit too high: the best cut is near 0.75, not 0.5."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = np.clip(0.6 + 0.3 * labels + rng.normal(0, 0.06, n), 0, 1)
    return probs, labels


@pytest.mark.parametrize("criterion", ["youden", "eer", "balanced_accuracy"])
def test_calibrated_threshold_on_shifted_scores(criterion):
    val_probs, val_labels = _shifted_toy(0)
    test_probs, test_labels = _shifted_toy(1)
    threshold = calibrated_threshold(val_probs, val_labels, criterion=criterion)
    assert 0.65 < threshold < 0.85
    assert abs(threshold - 0.5) > 0.1
    calibrated = binary_metrics(test_probs, test_labels, threshold=threshold)
    default = binary_metrics(test_probs, test_labels)
    assert calibrated["balanced_accuracy"] > default["balanced_accuracy"] + 0.2
    assert calibrated["balanced_accuracy"] > 0.95


def test_calibrated_threshold_reaches_the_best_youden_index():
    val_probs, val_labels = _scores(4)
    threshold = calibrated_threshold(val_probs, val_labels, "youden")
    fpr, tpr, thresholds = skm.roc_curve(val_labels, val_probs)
    best_j = np.max(tpr - fpr)
    preds = (val_probs >= threshold).astype(int)
    j = skm.recall_score(val_labels, preds) - (1 - skm.recall_score(val_labels, preds, pos_label=0))
    assert j == pytest.approx(best_j, abs=TOL)
    # Strict and non-strict comparison agree: the threshold never equals a val score.
    assert not np.any(np.isclose(val_probs, threshold))


def test_calibrated_threshold_one_class_falls_back_to_half():
    with pytest.warns(UserWarning, match="both classes"):
        assert calibrated_threshold(np.array([0.2, 0.9, 0.4]), np.array([1, 1, 1])) == 0.5
    with pytest.raises(ValueError):
        calibrated_threshold(np.array([0.2, 0.9]), np.array([0, 1]), criterion="nope")


def test_metrics_by_group_and_flatten():
    probs, labels = _scores(6, n=300)
    groups = np.repeat([0, 1, 2], 100)
    result = metrics_by_group(probs, labels, groups, group_names={0: "ADM", 1: "stable diffusion/v1.4"})
    assert list(result) == ["all", "ADM", "stable diffusion/v1.4", "2"]
    assert result["all"]["auc"] == pytest.approx(skm.roc_auc_score(labels, probs), abs=TOL)
    assert result["ADM"]["auc"] == pytest.approx(skm.roc_auc_score(labels[:100], probs[:100]), abs=TOL)
    assert result["2"]["n"] == 100

    flat = flatten_metrics(result, "test")
    assert flat["test/auc"] == result["all"]["auc"]
    assert flat["test/ADM/auc"] == result["ADM"]["auc"]
    assert flat["test/stable_diffusion_v1.4/auc"] == result["stable diffusion/v1.4"]["auc"]
    assert flat["test/2/f1"] == result["2"]["f1"]
    assert all(key.count("/") <= 2 for key in flat)
    assert len(flat) == 4 * len(result["all"])


def test_flatten_metrics_nan_handling_and_collisions():
    nested = {"all": {"auc": float("nan"), "accuracy": 0.5}, "..": {"auc": 0.7}}
    assert flatten_metrics(nested, "ood/jpeg/90", drop_nan=True) == {"ood/jpeg/90/accuracy": 0.5,
                                                                     "ood/jpeg/90/_/auc": 0.7}
    assert math.isnan(flatten_metrics(nested, "val")["val/auc"])
    assert flatten_metrics({"all": {"auc": 1.0}}, "") == {"auc": 1.0}
    with pytest.raises(ValueError):
        flatten_metrics({"a b": {"auc": 1.0}, "a_b": {"auc": 0.5}}, "test")


def test_metrics_vs_all_reals_on_a_constructed_example():
    """gen_a's fakes beat its own reals but not gen_b's reals: AUROC 1.0 against its own, 2/3 against all reals."""
    from experiments.evaluation.metrics import metrics_by_group, metrics_vs_all_reals
    from experiments.evaluation.predictions import Predictions, score

    probs = np.array([0.1, 0.2, 0.6, 0.7, 0.5, 0.9, 0.8, 0.95])
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    names = ["gen_a", "gen_b"]
    own = metrics_by_group(probs, labels, groups, names)
    every = metrics_vs_all_reals(probs, labels, groups, names)
    assert own["gen_a"]["auc"] == pytest.approx(1.0)
    # gen_a fakes {0.6, 0.7} against reals {0.1, 0.2, 0.5, 0.9}: 6 of 8 pairs ranked right
    assert every["gen_a"]["auc"] == pytest.approx(6 / 8)
    assert every["gen_a"]["n"] == 6 and every["gen_a"]["n_neg"] == 4 and "all" not in every
    # gen_b fakes {0.8, 0.95} against its own reals {0.5, 0.9}: 3/4; against all four reals: 7/8
    assert own["gen_b"]["auc"] == pytest.approx(3 / 4) and every["gen_b"]["auc"] == pytest.approx(7 / 8)
    split = Predictions(probs, labels, groups, np.arange(8), names)
    flat = score(split, split)
    assert flat["test/vs_all_reals/gen_a/auc"] == pytest.approx(6 / 8)
    assert flat["test/gen_a/auc"] == pytest.approx(1.0)


def test_per_generator_tables_name_both_comparisons(tmp_path):
    from experiments.evaluation.diagnostics import write_metrics_tables
    from experiments.evaluation.metrics import metrics_by_group, metrics_vs_all_reals

    probs, labels, groups = np.array([0.1, 0.8, 0.3, 0.9]), np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])
    own = write_metrics_tables(metrics_by_group(probs, labels, groups, ["a", "b"]), tmp_path)
    every = write_metrics_tables(metrics_vs_all_reals(probs, labels, groups, ["a", "b"]), tmp_path,
                                 "metrics_by_generator_vs_all_reals", compared_with="all reals")
    assert [p.name for p in every] == ["metrics_by_generator_vs_all_reals.csv", "metrics_by_generator_vs_all_reals.json"]
    own_rows = own[0].read_text().splitlines()
    assert own_rows[0].startswith("generator,compared_with,") and own_rows[2].startswith("a,own reals,")
    assert every[0].read_text().splitlines()[1].startswith("a,all reals,")
