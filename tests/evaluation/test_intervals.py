"""Student-t intervals over seeds and the printed form of an interval."""

from __future__ import annotations

import math

import pytest

from experiments.evaluation.intervals import format_ci, t_interval


def test_t_interval_known_values():
    mean, low, high = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} * s / sqrt(n)
    assert (mean, low, high) == pytest.approx((3.0, 3.0 - half, 3.0 + half), abs=1e-12)
    value, lo, hi = t_interval([0.93])
    assert value == 0.93 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        t_interval([])


def test_format_ci():
    assert format_ci(0.94213, 0.9181, 0.96311) == "0.942 [0.918, 0.963]"
    assert format_ci(0.5, 0.25, 0.75, digits=1) == "0.5 [0.2, 0.8]"
    assert format_ci(0.93, float("nan"), float("nan")) == "0.930"
