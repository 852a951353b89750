"""``task=analyze``: Corvi et al. (2023)-style spectra and noise-residual statistics of a toy dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image

from experiments.evaluation.residual_statistics import MomentAccumulator, make_groups, peak_to_median
from experiments.tasks.analyze import analyze
from experiments.data.layouts import Sample
from features.spectrum import power_spectrum
from tests.conftest import compose_config, make_genimage_tree

MAX_IMAGES = 5


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("analyze")
    tree = make_genimage_tree(tmp / "genimage", n=4, size=32)
    cfg = compose_config(["task=analyze", "data=genimage_tiny", f"data.root={tree}", "data.crop_size=32",
                          "data.resize_size=null", "data.num_workers=0", f"task.max_images={MAX_IMAGES}",
                          "task.batch_size=4", "task.n_radial=16", "task.n_angular=12"], tmp)
    return {"results": analyze(cfg), "out": Path(cfg.paths.output_dir), "uri": f"sqlite:///{tmp / 'mlruns.db'}"}


def test_writes_plots_tables_and_logs_them(analysed):
    out = analysed["out"]
    pngs = [out / f"spectral_by_{kind}.png" for kind in ("class", "generator", "generator_class")]
    for path in pngs:
        with Image.open(path) as img:
            assert img.format == "PNG" and np.asarray(img.convert("L")).std() > 1.0
    with (out / "spectral_statistics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["kind"], r["group"]) for r in rows] == [
        ("class", "real"), ("class", "synthetic"), ("generator", "gen_a"), ("generator", "gen_b"),
        ("generator_class", "gen_a/real"), ("generator_class", "gen_a/synthetic"),
        ("generator_class", "gen_b/real"), ("generator_class", "gen_b/synthetic"),
    ]
    # 8 images per generator and class over train + val: every group is capped at max_images
    assert all(int(r["n_images"]) == MAX_IMAGES for r in rows)
    md = (out / "spectral_statistics.md").read_text()
    assert "| kind | group |" in md and "gen_b/synthetic" in md and "kurtosis" in md
    client = mlflow.MlflowClient(tracking_uri=analysed["uri"])
    runs = client.search_runs([client.get_experiment_by_name("analyze-genimage_tiny").experiment_id],
                              filter_string="tags.task = 'analyze'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = {Path(a.path).name for a in client.list_artifacts(runs[0].info.run_id, "analysis")}
    assert {p.name for p in pngs} | {"spectral_statistics.csv", "spectral_statistics.md"} <= logged
    assert runs[0].data.metrics["analyze/class/synthetic/n_images"] == MAX_IMAGES


def test_group_arrays_have_the_right_shapes(analysed):
    stats = analysed["results"]["generator_class"]["gen_a/synthetic"]
    assert stats["power_spectrum"].shape == (32, 32) and stats["autocorrelation"].shape == (32, 32)
    assert stats["radial"].shape == (16,) and stats["angular"].shape == (12,)
    assert stats["autocorrelation"][16, 16] == pytest.approx(1.0)  # zero lag, normalised
    assert stats["radial"].sum() == pytest.approx(1.0) and stats["angular"].sum() == pytest.approx(1.0)


def test_checkerboard_fakes_have_a_much_higher_peak_to_median_ratio(analysed):
    """The toy fakes carry a period-2 checkerboard (transposed-convolution trace): one spectral peak."""
    results = analysed["results"]
    for real, fake in (("real", "synthetic"), ("gen_a/real", "gen_a/synthetic"), ("gen_b/real", "gen_b/synthetic")):
        kind = "class" if "/" not in real else "generator_class"
        r, f = results[kind][real], results[kind][fake]
        assert f["peak_to_median"] > 10 * r["peak_to_median"], (real, r["peak_to_median"], f["peak_to_median"])
        assert f["peak_to_median_per_image"] > 5 * r["peak_to_median_per_image"]
        # the peak sits at the Nyquist corner of the centred spectrum (index 0, 0)
        assert np.unravel_index(np.argmax(f["power_spectrum"]), (32, 32)) == (0, 0)
        # the checkerboard adds residual variance of (8 * 12/255)^2 on top of the noise
        assert f["variance"] > r["variance"] + 0.1


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
