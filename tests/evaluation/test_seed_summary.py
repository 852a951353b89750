"""A detector's metrics over seeds: the table cells of task=report."""

from __future__ import annotations

from experiments.evaluation.seed_summary import interval_cell


def test_interval_cell_formats():
    assert interval_cell(0.9421, 0.0, 1, 0.9183, 0.9634) == "0.942 [0.918, 0.963]"
    assert interval_cell(0.9421, 0.0, 1, float("nan"), float("nan")) == "0.942"
    assert interval_cell(0.85, 0.05, 3, 0.726, 0.974) == "0.850 ± 0.050 [0.726, 0.974] (n=3)"
    assert interval_cell(float("nan"), float("nan"), 0, float("nan"), float("nan")) == "n/a"


