"""Per-source false-positive rates at the operating point, the source x generator AUROC matrix and the worst
source, on hand-made scores with known answers."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from experiments.data.layouts import Sample
from experiments.evaluation.predictions import BootstrapSettings, Predictions, write_predictions_csv
from experiments.evaluation.real_sources import (
    SourceRate,
    rates_from_metrics,
    real_source_report,
    report_real_sources,
    source_fprs,
    source_generator_auroc,
    source_metrics,
    worst_source,
    worst_source_lines,
)

#: reals of A all above 0.5, of B all below, of C half above; two generators of fakes
SCORES = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.6, 0.4, 0.6, 0.4, 0.95, 0.85, 0.55, 0.05])
LABELS = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
SOURCES = ["A", "A", "A", "B", "B", "B", "C", "C", "C", "C", "", "", "", ""]
GENERATORS = ["g1"] * 3 + ["g2"] * 3 + ["g1"] * 4 + ["g1", "g1", "g2", "g2"]


def test_per_source_fpr_and_intervals_at_a_threshold():
    rates = {r.source: r for r in source_fprs(SCORES, LABELS, SOURCES, 0.5, BootstrapSettings(resamples=500))}
    assert sorted(rates) == ["A", "B", "C"]  # fakes carry no source
    assert (rates["A"].fpr, rates["A"].ci_low, rates["A"].ci_high, rates["A"].n_real) == (1.0, 1.0, 1.0, 3)
    assert (rates["B"].fpr, rates["B"].ci_low, rates["B"].ci_high) == (0.0, 0.0, 0.0)
    c = rates["C"]
    assert c.fpr == 0.5 and c.n_real == 4 and 0.0 <= c.ci_low < 0.5 < c.ci_high <= 1.0
    assert source_fprs(SCORES, LABELS, SOURCES, 0.6)[2].fpr == 0.5  # score == threshold is flagged
    plain = source_fprs(SCORES, LABELS, SOURCES, 0.5)
    assert all(math.isnan(r.ci_low) for r in plain)  # no bootstrap, no interval


def test_source_by_generator_auroc_cells():
    matrix, rows, cols = source_generator_auroc(SCORES, LABELS, SOURCES, GENERATORS)
    assert rows == ["A", "B", "C"] and cols == ["g1", "g2"]
    # g1 fakes: 0.95, 0.85; g2 fakes: 0.55, 0.05
    # A's reals 0.9, 0.8, 0.7 vs g1: 0.95 is above all three, 0.85 above two -> 5 of 6 pairs
    assert matrix[0, 0] == pytest.approx(5 / 6)
    assert matrix[0, 1] == pytest.approx(0.0)  # 0.55 and 0.05 below every A real
    assert matrix[1, 0] == pytest.approx(1.0)
    assert matrix[1, 1] == pytest.approx(3 / 6)  # 0.55 beats 0.1, 0.2, 0.3; 0.05 none
    assert matrix[2, 1] == pytest.approx(2 / 8)  # 0.55 beats the two 0.4s


def test_paired_generator_folders_sit_on_the_diagonal():
    scores = [0.1, 0.2, 0.9, 0.8]
    matrix, rows, cols = source_generator_auroc(scores, [0, 0, 1, 1], ["b", "a", "", ""], ["b", "a", "a", "c"])
    assert rows == ["a", "b"] and cols == ["a", "c"]  # the named source first, then the generator without reals
    assert np.array_equal(matrix, np.ones((2, 2)))


def test_worst_source_named_and_metrics_round_trip():
    rates = source_fprs(SCORES, LABELS, SOURCES, 0.5, BootstrapSettings(resamples=200))
    assert worst_source(rates).source == "A"
    tie = [SourceRate("z", 0.3, 0, 1, 5), SourceRate("y", 0.3, 0, 1, 5), SourceRate("x", math.nan, 0, 1, 5)]
    assert worst_source(tie).source == "y" and worst_source([]) is None
    metrics = source_metrics(rates)
    assert metrics["test/source/A/fpr_at_op"] == 1.0 and metrics["test/source/B/fpr_at_op_ci_high"] == 0.0
    assert {(r.source, r.fpr) for r in rates_from_metrics(metrics)} == {("A", 1.0), ("B", 0.0), ("C", 0.5)}
    lines = worst_source_lines([("cnn (seed 0)", metrics), ("old run", {"test/auc": 0.9})])
    assert lines == ["cnn (seed 0): A: FPR 1.000 [1.000, 1.000] (of 3 real sources)"]
    assert source_metrics([SourceRate("night mode/raw", 0.1, 0.0, 0.2, 3)]).keys() >= {
        "test/source/night_mode_raw/fpr_at_op"}


def _samples_and_predictions(tmp_path):
    samples = []
    for i, (label, source, generator) in enumerate(zip(LABELS, SOURCES, GENERATORS)):
        path = tmp_path / f"{i}.png"
        path.write_bytes(bytes([i]))
        # A and C come from the manifest's source column; B is left empty and takes its generator g2
        samples.append(Sample(str(path), int(label), generator, path.name, "" if source == "B" else source))
    names = ["g1", "g2"]
    order = np.arange(len(samples))[::-1]  # prediction order differs from the split's
    pred = Predictions(SCORES[order], LABELS[order], np.array([names.index(GENERATORS[i]) for i in order]), order,
                       names)
    return samples, pred


def test_report_writes_csvs_heatmap_and_metrics(tmp_path):
    samples, test = _samples_and_predictions(tmp_path)
    report = real_source_report(test, samples, 0.5, BootstrapSettings(resamples=100))
    assert [(r.source, r.fpr) for r in report.rates] == [("A", 1.0), ("C", 0.5), ("g2", 0.0)]
    assert report.worst.source == "A" and report.cols == ["g2", "g1"]  # g2 is also a source: first
    metrics = report_real_sources(test, samples, 0.5, BootstrapSettings(resamples=100), tmp_path / "run")
    assert metrics == report.metrics() and "test/source/g2/fpr_at_op" in metrics
    folder = tmp_path / "run" / "real_sources"
    assert {p.name for p in folder.iterdir()} == {"source_fpr.csv", "source_generator_auc.csv",
                                                 "source_generator_auc.png"}
    rows = list(csv.DictReader((folder / "source_fpr.csv").open()))
    assert [(r["source"], float(r["fpr_at_op"]), int(r["n_real"])) for r in rows] == [
        ("A", 1.0, 3), ("C", 0.5, 4), ("g2", 0.0, 3)]
    grid = list(csv.reader((folder / "source_generator_auc.csv").open()))
    assert grid[0] == ["source \\ generator", "g2", "g1"] and [r[0] for r in grid[1:]] == ["A", "C", "g2"]
    assert float(grid[3][2]) == pytest.approx(1.0)  # B's reals (source g2) against g1's fakes
    assert report_real_sources(test, samples, None, None, tmp_path / "none") == {}


def test_predictions_csv_carries_the_source(tmp_path):
    samples, pred = _samples_and_predictions(tmp_path)
    out = write_predictions_csv(pred, samples, tmp_path / "predictions_test.csv")
    rows = {int(r["index"]): r for r in csv.DictReader(out.open())}
    assert [rows[i]["source"] for i in (0, 3, 6, 10)] == ["A", "g2", "C", ""]
