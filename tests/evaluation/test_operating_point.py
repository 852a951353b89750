"""Operating points chosen on real images only, their rates on test with intervals, and abstention: known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments.errors import UserError
from experiments.evaluation.abstention import (
    AbstainSpec,
    AbstentionBand,
    coverage_band,
    fit_band,
    parse_abstain,
    selective_rates,
)
from experiments.evaluation.calibration import TemperatureScaling, read_calibration, write_calibration
from experiments.evaluation.deployment import (
    DeploymentSettings,
    fit_deployment,
    fpr_at_threshold_by_group,
    operating_point_metrics,
    rates_at_threshold_by_group,
)
from experiments.evaluation.operating_point import (
    RECORD_KEY,
    parse_operating_point,
    rates_at_threshold,
    threshold_at_fpr,
)
from experiments.evaluation.predictions import BootstrapSettings, Predictions
from experiments.inference.loading import LoadedDetector


def _predictions(reals, fakes, generators=None, names=("gen_a", "gen_b")) -> Predictions:
    prob = np.concatenate([reals, fakes]).astype(np.float64)
    label = np.r_[np.zeros(len(reals), np.int64), np.ones(len(fakes), np.int64)]
    generator = np.zeros(len(prob), np.int64) if generators is None else np.asarray(generators, np.int64)
    return Predictions(prob, label, generator, np.arange(len(prob)), list(names))


def test_uniform_val_reals_give_the_threshold_0_95_at_fpr_0_05():
    spec = parse_operating_point("fpr@0.05")
    assert spec.target_fpr == 0.05 and spec.name == "fpr@0.05"
    assert threshold_at_fpr(np.linspace(0, 1, 10001), spec.target_fpr) == pytest.approx(0.95, abs=1e-12)
    # fakes never enter: a val split with any fakes gives the same threshold
    val = _predictions(np.linspace(0, 1, 10001), np.full(50, 0.2))
    record, band = fit_deployment(val, DeploymentSettings(spec))
    assert record["threshold"] == pytest.approx(0.95, abs=1e-12) and record["n_real"] == 10001 and band is None


def test_rates_at_a_threshold_of_a_hand_made_set():
    scores = [0.1, 0.5, 0.7, 0.2, 0.6, 0.9, 0.3]  # reals 0.1 0.5 0.7 0.2; fakes 0.6 0.9 0.3
    labels = [0, 0, 0, 0, 1, 1, 1]
    assert rates_at_threshold(scores, labels, 0.5) == {"tpr": pytest.approx(2 / 3), "fpr": 0.5}  # >= counts
    assert rates_at_threshold(scores, labels, 0.95) == {"tpr": 0.0, "fpr": 0.0}


@pytest.mark.parametrize("spec", ["fpr=0.05", "tpr@0.9", "fpr@1.5", "fpr@0"])
def test_bad_operating_points_name_the_key(spec):
    with pytest.raises(ValueError, match=r"eval\.operating_point") as err:
        parse_operating_point(spec)
    assert isinstance(err.value, UserError)


@pytest.mark.parametrize("spec", ["coverage=0.9", "coverage@1.2", [0.7, 0.3], [0.2], ["a", "b"], [-0.1, 0.5]])
def test_bad_abstention_bands_name_the_key(spec):
    with pytest.raises(ValueError, match=r"eval\.abstain") as err:
        parse_abstain(spec)
    assert isinstance(err.value, UserError)


def test_abstention_specs():
    assert parse_abstain(None) is None and parse_abstain("null") is None
    assert parse_abstain("coverage@0.9") == AbstainSpec(coverage=0.9)
    assert parse_abstain(OmegaConf.create([0.4, 0.6])) == AbstainSpec(band=(0.4, 0.6))  # as Hydra passes a list
    band = fit_band(AbstainSpec(band=(0.4, 0.6)), [], 0.5)
    assert (band.low, band.high, band.spec) == (0.4, 0.6, "[0.4, 0.6]")


def test_coverage_0_9_answers_90_percent_of_val():
    rng = np.random.default_rng(0)
    val = rng.random(1000)  # distinct scores
    band = coverage_band(val, threshold=0.3, coverage=0.9)
    answered = ~band.abstains(val)
    assert answered.mean() == 0.9
    # the abstained tenth is the one closest to the threshold (Geifman & El-Yaniv's lowest-confidence share)
    margin = np.abs(val - 0.3)
    assert margin[~answered].max() < margin[answered].min()
    assert band.low == pytest.approx(0.3 - np.quantile(margin, 0.1)) and band.spec == "coverage@0.9"


def test_coverage_and_selective_accuracy_of_a_hand_made_set():
    scores = [0.1, 0.45, 0.55, 0.9, 0.8]
    labels = [0, 1, 0, 1, 0]
    band = AbstentionBand(0.4, 0.6, "[0.4, 0.6]")
    # answered: 0.1 (real, right), 0.9 (fake, right), 0.8 (real, wrong)
    rates = selective_rates(scores, labels, band, threshold=0.5)
    assert rates["coverage"] == pytest.approx(0.6) and rates["selective_accuracy"] == pytest.approx(2 / 3)
    everything = selective_rates(scores, labels, AbstentionBand(0.0, 1.0, "all"), 0.5)
    assert everything["coverage"] == 0.0 and np.isnan(everything["selective_accuracy"])


def test_operating_point_metrics_with_intervals():
    # test reals: 1 of 10 at or above 0.5; gen_a fakes: 3 of 4 above; gen_b fakes: all 4 above
    reals = [0.1, 0.2, 0.3, 0.35, 0.4, 0.42, 0.45, 0.47, 0.49, 0.6]
    fakes = [0.55, 0.7, 0.8, 0.3, 0.9, 0.95, 0.65, 0.75]
    generators = [0] * 5 + [1] * 5 + [0] * 4 + [1] * 4
    test = _predictions(reals, fakes, generators)
    band = AbstentionBand(0.45, 0.55, "[0.45, 0.55]")
    boot = BootstrapSettings(resamples=300, confidence=0.9, seed=3)
    m = operating_point_metrics(test, 0.5, 0.05, band, boot)
    assert m["op/threshold"] == 0.5 and m["op/target_fpr"] == 0.05
    assert m["test/fpr_at_op"] == pytest.approx(0.1) and m["test/tpr_at_op"] == pytest.approx(7 / 8)
    assert m["test/fpr_drift_at_op"] == pytest.approx(0.05)
    assert m["test/gen_a/tpr_at_op"] == pytest.approx(0.75) and m["test/gen_b/tpr_at_op"] == 1.0
    assert m["test/gen_b/tpr_at_op_ci_low"] == m["test/gen_b/tpr_at_op_ci_high"] == 1.0  # every resample: 4 of 4
    # 0.45, 0.47, 0.49 and 0.55 abstain: 14 of 18 answered, of which 0.6 (real) and 0.3 (fake) are wrong
    assert m["test/coverage"] == pytest.approx(14 / 18) and m["test/selective_accuracy"] == pytest.approx(12 / 14)
    for name in ("tpr_at_op", "fpr_at_op", "fpr_drift_at_op", "coverage", "selective_accuracy", "gen_a/tpr_at_op"):
        low, high = m[f"test/{name}_ci_low"], m[f"test/{name}_ci_high"]
        assert low <= m[f"test/{name}"] <= high and low < high, name
    assert m["test/fpr_drift_at_op_ci_low"] == pytest.approx(m["test/fpr_at_op_ci_low"] - 0.05)
    assert operating_point_metrics(test, 0.5, 0.05, band, boot) == m  # the run's seed: the same intervals
    plain = operating_point_metrics(test, 0.5, 0.05)
    assert not any(k.endswith(("_ci_low", "_ci_high")) for k in plain) and "test/coverage" not in plain


def test_fpr_by_group_of_real_sources():
    scores = [0.9, 0.1, 0.2, 0.6, 0.7, 0.95]
    labels = [0, 0, 0, 0, 0, 1]
    sources = ["phone", "phone", "phone", "scan", "scan", "phone"]  # the fake's group is ignored
    by_source = fpr_at_threshold_by_group(scores, labels, sources, 0.5, BootstrapSettings(200, 0.95, 0))
    assert set(by_source) == {"phone", "scan"}
    assert by_source["phone"]["fpr_at_op"] == pytest.approx(1 / 3) and by_source["scan"]["fpr_at_op"] == 1.0
    assert by_source["scan"]["fpr_at_op_ci_low"] == by_source["scan"]["fpr_at_op_ci_high"] == 1.0
    rates = rates_at_threshold_by_group(scores, labels, np.array([0, 0, 0, 1, 1, 0]), 0.5, names={0: "a", 1: "b"})
    assert rates["a"]["tpr_at_op"] == 1.0 and np.isnan(rates["b"]["tpr_at_op"])


def test_calibration_json_stores_the_operating_point_and_band_and_old_files_still_read(tmp_path: Path):
    calibrator = TemperatureScaling(2.0)
    record = {"spec": "fpr@0.05", "target_fpr": 0.05, "threshold": 0.8, "fitted_on": "val", "n_real": 20}
    band = AbstentionBand(0.7, 0.9, "coverage@0.9", "val")
    path = write_calibration(tmp_path / "calibration.json", calibrator, 0.6, operating_point=record,
                             abstention=band.record())
    _, stored = read_calibration(path, TemperatureScaling)
    assert stored[RECORD_KEY] == record
    detector = LoadedDetector(None, OmegaConf.create({}), path, calibrator=calibrator, calibration=stored)
    assert detector.operating_threshold == 0.8 and detector.abstention == band
    old = write_calibration(tmp_path / "old.json", calibrator, 0.6)
    assert RECORD_KEY not in json.loads(old.read_text())
    _, old_record = read_calibration(old, TemperatureScaling)
    old_detector = LoadedDetector(None, OmegaConf.create({}), old, calibrator=calibrator, calibration=old_record)
    assert old_detector.operating_threshold is None and old_detector.abstention is None
    assert LoadedDetector(None, OmegaConf.create({}), old).operating_point is None  # no calibration.json at all
