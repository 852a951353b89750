"""The laundering side of the stress engine with known answers: the operating threshold a run is read at, the
rates at it per grid point, the severity table and figure, and the refusal of size-changing chains after the
preprocessing. The stress run itself is tested in test_ood_stress.py (on its trained tiny detectors)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments.data.laundering import Crop, Greyscale
from experiments.inference.loading import LoadedDetector
from experiments.inference.stress import evaluate_detectors, point_metrics, too_small_policy
from experiments.inference.stress_tables import severity_rows, write_curves, write_severity_table


def loaded(calibration) -> LoadedDetector:
    return LoadedDetector(model=None, cfg=OmegaConf.create({}), source=Path("x.pth"), calibration=calibration)


def test_operating_threshold_is_the_stored_operating_point_only():
    assert loaded({"threshold": 0.3, "operating_point": {"threshold": 0.7}}).operating_threshold == 0.7
    assert loaded({"threshold": 0.3}).operating_threshold is None  # saved before operating points: no rates at op
    assert loaded(None).operating_threshold is None


def test_point_metrics_rates_at_the_threshold():
    probs = np.array([0.1, 0.2, 0.6, 0.8, 0.4, 0.9, 0.7, 0.3])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    out = point_metrics(probs, labels, threshold=0.5)
    assert out["tpr_at_op"] == 0.5 and out["fpr_at_op"] == 0.5  # 0.9, 0.7 of the fakes; 0.6, 0.8 of the reals
    assert out["auc"] == pytest.approx(11 / 16)  # fake > real in 2 + 4 + 3 + 2 of 16 pairs and out["n"] == 8
    assert math.isnan(point_metrics(probs, labels, None)["tpr_at_op"])
    empty = point_metrics(np.empty(0), np.empty(0), 0.5)
    assert empty["n"] == 0 and math.isnan(empty["auc"])


def test_too_small_policy_is_checked():
    assert too_small_policy(None) == "skip" and too_small_policy("upscale") == "upscale"
    with pytest.raises(ValueError, match="ood.too_small"):
        too_small_policy("stretch")


def test_size_changing_chains_are_refused_after_preprocessing():
    grid = Crop(["clean", 0.5]).points("crop")
    with pytest.raises(ValueError, match="before_preprocessing"):
        evaluate_detectors([], grid, 0, lambda det: None, order="after_preprocessing")


def test_severity_table_and_figure(tmp_path):
    grid = [*Crop(["clean", 0.5]).points("crop"), *Greyscale(["clean", "grey"]).points("greyscale")]

    def point(auc, tpr, skipped=0):
        return {"auc": auc, "ap": auc, "accuracy": auc, "tpr_at_op": tpr, "fpr_at_op": 0.05, "n": 10,
                "skipped": skipped, "upscaled": 0}

    results = {"det_a": {"crop/clean": point(0.9, 0.8), "crop/a50": point(0.7, 0.4, skipped=2),
                         "greyscale/clean": point(0.9, 0.8), "greyscale/grey": point(0.85, 0.7)},
               "det_b": {"crop/clean": point(0.6, 0.5), "crop/a50": point(float("nan"), float("nan")),
                         "greyscale/clean": point(0.6, 0.5), "greyscale/grey": point(0.55, 0.3)}}
    rows = severity_rows(results, grid)
    assert rows["crop"] == (["clean", "a50"], [["det_a", "0.9000 / 0.8000 / 0.0500", "0.7000 / 0.4000 / 0.0500"],
                                               ["det_b", "0.6000 / 0.5000 / 0.0500", "n/a / n/a / 0.0500"]])
    md, long = write_severity_table(results, grid, tmp_path)
    text = md.read_text()
    assert "## crop" in text and "| detector | clean | a50 |" in text and "| det_a | 0.9000 / 0.8000 / 0.0500 | 0.7000 / 0.4000 / 0.0500 |" in text
    lines = long.read_text().splitlines()
    assert lines[0] == "detector,chain,position,level,auc,tpr_at_op,fpr_at_op,n,skipped,upscaled"
    assert "det_a,crop,1,a50,0.7,0.4,0.05,10,2,0" in lines and len(lines) == 1 + 2 * 4
    paths = write_curves(results, grid, tmp_path)
    assert [p.name for p in paths] == ["severity_crop.png", "severity_greyscale.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
