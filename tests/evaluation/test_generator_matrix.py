"""Cross-generator matrices: records to the train x test matrix, its summary and its cell intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.evaluation.generator_matrix import build_matrix, cell_intervals, records_from_run, summarize

GENS = ("a", "b", "c")


def toy_records() -> list[dict]:
    """auc = 0.9 on the diagonal; off the diagonal 0.5 + 0.1 * row + 0.01 * column (row/column = position in GENS)."""
    records = []
    for i, train in enumerate(GENS):
        for j, test in enumerate(GENS):
            auc = 0.9 if i == j else 0.5 + 0.1 * i + 0.01 * j
            records.append({"train": train, "test": test, "auc": auc, "accuracy": auc - 0.1})
    return records


def test_build_matrix_places_each_record_at_train_row_test_column():
    records = toy_records()[::-1]  # order must not matter
    matrix, rows, cols = build_matrix(records, "auc")
    assert rows == list(GENS) and cols == list(GENS)
    assert matrix.shape == (3, 3)
    np.testing.assert_allclose(np.diag(matrix), 0.9)
    assert matrix[0, 1] == pytest.approx(0.51)  # trained on a, tested on b
    assert matrix[1, 0] == pytest.approx(0.60)  # trained on b, tested on a
    assert matrix[2, 1] == pytest.approx(0.71)  # trained on c, tested on b
    off = [0.5 + 0.1 * i + 0.01 * j for i in range(3) for j in range(3) if i != j]
    summary = summarize(matrix, rows, cols)
    assert summary["diagonal_mean"] == pytest.approx(0.9)
    assert summary["off_diagonal_mean"] == pytest.approx(np.mean(off))
    assert summary["off_diagonal_min"] == pytest.approx(min(off))  # the worst unseen generator: trained a, tested b
    acc, _, _ = build_matrix(records, "accuracy")
    np.testing.assert_allclose(acc, matrix - 0.1)


def test_build_matrix_averages_seeds_and_leaves_missing_cells_nan():
    records = [
        {"train": "b", "test": "a", "auc": 0.6}, {"train": "b", "test": "a", "auc": 0.8},  # two seeds
        {"train": "b", "test": "b", "auc": 1.0}, {"train": "a", "test": "a", "auc": 0.9},
        {"train": "a", "test": "z_only_tested", "auc": 0.4}, {"train": "a", "test": "b", "auc": float("nan")},
    ]
    matrix, rows, cols = build_matrix(records, "auc")
    assert rows == ["a", "b"] and cols == ["a", "b", "z_only_tested"]  # diagonal first, test-only columns last
    assert matrix[1, 0] == pytest.approx(0.7)
    assert math.isnan(matrix[0, 1]) and math.isnan(matrix[1, 2])
    summary = summarize(matrix, rows, cols)
    assert summary["diagonal_mean"] == pytest.approx(0.95)
    assert summary["off_diagonal_mean"] == pytest.approx((0.7 + 0.4) / 2)


def test_records_from_run_reads_per_generator_test_metrics():
    metrics = {"test/auc": 0.8, "test/a/auc": 0.9, "test/b/auc": 0.7, "test/b/accuracy": 0.6,
               "test/accuracy_at_val_threshold": 0.5, "best_val/auc": 1.0, "test/b/f1": 0.3,
               "test/b/auc_ci_low": 0.6, "test/b/auc_ci_high": 0.8, "test/b/f1_ci_low": 0.1}
    records = sorted(records_from_run("m", "a", "0", metrics, ["auc", "accuracy"]), key=lambda r: r["test"])
    assert records == [
        {"model": "m", "seed": "0", "train": "a", "test": "a", "auc": 0.9},
        {"model": "m", "seed": "0", "train": "a", "test": "b", "auc": 0.7, "accuracy": 0.6,
         "auc_ci_low": 0.6, "auc_ci_high": 0.8},
    ]


def test_cell_intervals_come_from_a_single_run_only():
    records = [
        {"train": "a", "test": "a", "auc": 0.9, "auc_ci_low": 0.85, "auc_ci_high": 0.95},
        {"train": "a", "test": "b", "auc": 0.6, "auc_ci_low": 0.5, "auc_ci_high": 0.7},
        {"train": "a", "test": "b", "auc": 0.8, "auc_ci_low": 0.7, "auc_ci_high": 0.9},  # a second seed
        {"train": "b", "test": "a", "auc": 0.7},  # no bounds logged
    ]
    matrix, rows, cols = build_matrix(records, "auc")
    low, high = cell_intervals(records, "auc", rows, cols)
    assert (low[0, 0], high[0, 0]) == (0.85, 0.95)
    assert math.isnan(low[0, 1]) and math.isnan(high[0, 1])  # two seeds averaged: no single interval
    assert math.isnan(low[1, 0]) and math.isnan(low[1, 1])




def test_held_out_table_has_a_row_per_held_out_generator_and_a_column_per_detector():
    from experiments.evaluation.generator_matrix import held_out_summary, held_out_table

    records = {
        "npr": [{"train": f"all_but_{g}", "test": g, "auc": 0.9 + 0.01 * i, "auc_ci_low": 0.8, "auc_ci_high": 0.95}
                for i, g in enumerate(GENS)],
        "logreg": [{"train": "all_but_a", "test": "a", "auc": 0.7},  # two seeds: averaged, no single interval
                   {"train": "all_but_a", "test": "a", "auc": 0.8},
                   {"train": "all_but_c", "test": "c", "auc": 0.6, "auc_ci_low": 0.5, "auc_ci_high": 0.7}],
    }
    values, low, high, generators, models = held_out_table(records, "auc")
    assert generators == list(GENS) and models == ["logreg", "npr"]
    np.testing.assert_allclose(values, [[0.75, 0.90], [np.nan, 0.91], [0.60, 0.92]])
    assert math.isnan(low[0, 0]) and (low[2, 0], high[2, 0]) == (0.5, 0.7) and (low[1, 1], high[1, 1]) == (0.8, 0.95)
    assert held_out_summary(values[:, 0]) == pytest.approx({"held_out_mean": 0.675, "held_out_min": 0.6})
    assert all(math.isnan(v) for v in held_out_summary(np.array([np.nan])).values())


def test_chronological_table_reads_each_run_in_windows():
    from experiments.evaluation.generator_matrix import chronological_summary, chronological_table

    def record(model, k, test, auc, seed="1"):
        return {"model": model, "seed": seed, "train": f"upto_{'abcd'[k - 1]}", "test": test, "order": "a,b,c,d",
                "k": k, "auc": auc, "auc_ci_low": auc - 0.1, "auc_ci_high": auc + 0.1}

    records = {"m": [record("m", 1, "b", 0.9), record("m", 1, "c", 0.8), record("m", 1, "d", 0.6),
                     record("m", 2, "c", 0.9), record("m", 2, "d", 0.7), record("m", 2, "d", 0.5, seed="2")],
               "n": [record("n", 1, "b", 0.7)]}
    values, low, high, rows, models = chronological_table(records, "auc", window=2)
    assert rows == [("upto_a", "b+c"), ("upto_a", "d"), ("upto_b", "c+d")] and models == ["m", "n"]
    np.testing.assert_allclose(values[:, 0], [0.85, 0.6, (0.9 + 0.6) / 2])  # seeds averaged first
    assert np.isnan(low[0, 0]) and low[1, 0] == pytest.approx(0.5)  # an interval only for a one-generator window
    assert values[0, 1] == pytest.approx(0.7) and np.isnan(values[1:, 1]).all()
    one = chronological_table(records, "auc", window=1)
    assert one[3] == [("upto_a", "b"), ("upto_a", "c"), ("upto_a", "d"), ("upto_b", "c"), ("upto_b", "d")]
    assert np.isnan(one[1][4, 0])  # two seeds: no single interval
    first = np.array([True, False, False, True, False])
    assert chronological_summary(one[0][:, 0], first) == pytest.approx(
        {"window_mean": (0.9 + 0.8 + 0.6 + 0.9 + 0.6) / 5, "window_min": 0.6, "next_window_mean": 0.9})
