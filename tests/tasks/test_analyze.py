"""``task=analyze``: Corvi et al. (2023)-style spectra and noise-residual statistics of a toy dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from experiments.tasks.analyze import analyze
from tests.conftest import assert_source_tags, compose_config, make_genimage_tree

MAX_IMAGES = 5


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("analyze")
    tree = make_genimage_tree(tmp / "genimage", n=4, size=32)
    overrides = ["task=analyze", "data=genimage_tiny", f"data.root={tree}", "data.crop_size=32",
                 "data.resize_size=null", "data.num_workers=0", f"task.max_images={MAX_IMAGES}",
                 "task.batch_size=4", "task.n_radial=16", "task.n_angular=12", "+logger.tags.note=spectra"]
    cfg = compose_config(overrides, tmp)
    return {"results": analyze(cfg), "out": Path(cfg.paths.output_dir), "uri": f"sqlite:///{tmp / 'mlruns.db'}",
            "overrides": overrides}


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
    runs = client.search_runs([client.get_experiment_by_name("analyze-detectors-genimage_tiny").experiment_id],
                              filter_string="tags.task = 'analyze'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = {Path(a.path).name for a in client.list_artifacts(runs[0].info.run_id, "analysis")}
    assert {p.name for p in pngs} | {"spectral_statistics.csv", "spectral_statistics.md"} <= logged
    assert runs[0].data.metrics["analyze/class/synthetic/n_images"] == MAX_IMAGES
    assert runs[0].data.params["analyze/splits"] == "train,val,test"
    assert_source_tags(client, runs[0].info.run_id, analysed["overrides"], {"note": "spectra", "task": "analyze"})


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
