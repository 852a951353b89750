"""Noise-residual statistics (Corvi et al., 2023): peak-to-median ratio, streaming moments, seeded groups."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from experiments.data.layouts import Sample
from experiments.evaluation.residual_statistics import MomentAccumulator, make_groups, peak_to_median
from features.spectrum import power_spectrum


def test_peak_to_median_ignores_dc_and_finds_a_sinusoid():
    h = w = 32
    yy, xx = np.indices((h, w))
    flat = torch.full((1, h, w), 5.0, dtype=torch.float64)  # all power at DC
    wave = torch.from_numpy(np.cos(2 * np.pi * 4 * xx / w))[None] + 0.01 * torch.randn(1, h, w, dtype=torch.float64,
                                                                                        generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(peak_to_median(power_spectrum(flat))).all()
    assert float(peak_to_median(power_spectrum(wave))) > 1e3
    noise = torch.randn(4, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert float(peak_to_median(power_spectrum(noise)).max()) < 50


def test_moments_match_scipy_on_a_fixed_array():
    values = np.random.default_rng(3).gamma(2.0, 1.5, size=10_007) - 1.0  # skewed, heavy right tail
    acc = MomentAccumulator()
    for chunk in np.array_split(values, [1, 100, 2_500, 2_501, 9_000]):
        acc.update(torch.from_numpy(chunk.reshape(-1, 1)))
    assert acc.n == values.size
    assert acc.mean == pytest.approx(values.mean(), rel=1e-12)
    assert acc.variance == pytest.approx(values.var(), rel=1e-10)
    assert acc.skewness == pytest.approx(scipy.stats.skew(values), rel=1e-9)
    assert acc.kurtosis == pytest.approx(scipy.stats.kurtosis(values), rel=1e-9)
    merged = MomentAccumulator().update(values[:5000]).merge(MomentAccumulator().update(values[5000:]))
    assert merged.kurtosis == pytest.approx(scipy.stats.kurtosis(values), rel=1e-9)
    assert np.isnan(MomentAccumulator().update(np.ones(10)).skewness)


def test_groups_are_seeded_and_capped():
    samples = [Sample(f"{g}_{c}_{i}.png", c, g) for g in ("x", "y") for c in (0, 1) for i in range(7)]
    groups = make_groups(samples, max_images=3, seed=0)
    assert [(g.grouping, g.key, len(g.members)) for g in groups][:4] == [
        ("class", "real", 3), ("class", "synthetic", 3), ("generator", "x", 3), ("generator", "y", 3)]
    for g in groups:
        assert all((g.label is None or samples[i].label == g.label)
                   and (g.generator is None or samples[i].generator == g.generator) for i in g.members)
    assert [g.members for g in make_groups(samples, 3, seed=0)] == [g.members for g in groups]
    with pytest.raises(ValueError, match="max_images"):
        make_groups(samples, 0)
