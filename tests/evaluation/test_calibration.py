"""Temperature and Platt scaling: known temperatures, fitted on validation only, JSON state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from experiments.evaluation.calibration import (
    PlattScaling,
    TemperatureScaling,
    brier_score,
    calibration_report,
    logit,
)
from experiments.evaluation.metrics import expected_calibration_error


def _overconfident(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z), z ~ N(0, 2^2); the scorer reports ``scale * z``, so T = scale is calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < expit(z)).astype(np.int64)
    return scale * z, labels


def test_temperature_recovers_overconfidence_and_lowers_ece_on_held_out_data():
    val_logits, val_labels = _overconfident(20_000, 5.0, seed=1)
    test_logits, test_labels = _overconfident(20_000, 5.0, seed=2)
    scaler = TemperatureScaling().fit(val_logits, val_labels)
    assert scaler.temperature == pytest.approx(5.0, abs=0.3)
    before, after = expit(test_logits), scaler.transform(test_logits)
    report = calibration_report(before, after, test_labels)
    assert report["ece_before"] > 0.1 and report["ece_after"] < 0.03
    assert report["ece_after"] < report["ece_before"] / 4
    assert report["brier_after"] < report["brier_before"]
    assert np.array_equal(np.argsort(after, kind="stable"), np.argsort(test_logits, kind="stable"))  # ranking kept


def test_temperature_is_fitted_on_validation_only_and_transform_never_refits():
    """Validation is 5x over-confident, test only 2x: the temperature must be the validation one."""
    val_logits, val_labels = _overconfident(10_000, 5.0, seed=3)
    test_logits, test_labels = _overconfident(10_000, 2.0, seed=4)
    t_val = TemperatureScaling().fit(val_logits, val_labels).temperature
    t_test = TemperatureScaling().fit(test_logits, test_labels).temperature
    assert abs(t_val - 5.0) < 0.4 and abs(t_test - 2.0) < 0.2  # the two sets really differ

    scaler = TemperatureScaling().fit(val_logits, val_labels)
    assert scaler.temperature == t_val
    out = scaler.transform(test_logits)
    assert scaler.temperature == t_val
    np.testing.assert_allclose(out, expit(test_logits / t_val), rtol=0, atol=1e-15)
    assert np.max(np.abs(out - expit(test_logits / t_test))) > 0.05
    # applying the validation temperature to the less over-confident test set now under-states confidence
    assert TemperatureScaling().fit(logit(out), test_labels).temperature < 0.6


def test_platt_is_fitted_on_validation_only_and_transform_never_refits():
    val_scores, val_labels = _overconfident(10_000, 5.0, seed=5)
    test_scores, test_labels = _overconfident(10_000, 2.0, seed=6)
    platt = PlattScaling().fit(val_scores, val_labels)
    assert platt.a == pytest.approx(1 / 5.0, abs=0.02) and abs(platt.b) < 0.1
    a, b = platt.a, platt.b
    out = platt.transform(test_scores)
    assert (platt.a, platt.b) == (a, b)
    np.testing.assert_allclose(out, expit(a * test_scores + b), rtol=0, atol=1e-15)
    assert PlattScaling().fit(test_scores, test_labels).a == pytest.approx(1 / 2.0, abs=0.05)


def test_platt_without_smoothing_is_maximum_likelihood_logistic_regression():
    scores, labels = _overconfident(3000, 3.0, seed=7)
    scores = 40.0 * scores + 7.0  # an arbitrary scale and offset, as a decision function may have
    platt = PlattScaling(smooth_targets=False).fit(scores, labels)
    reference = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(scores[:, None], labels)
    assert platt.a == pytest.approx(reference.coef_[0, 0], rel=1e-6)
    assert platt.b == pytest.approx(reference.intercept_[0], abs=1e-5)


def test_platt_targets_keep_separable_data_finite():
    scores = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    platt = PlattScaling().fit(scores, labels)
    assert math.isfinite(platt.a) and 0 < platt.a < 10
    probs = platt.transform(scores)
    # Platt's targets 1 / (N- + 2) = 0.2 and (N+ + 1) / (N+ + 2) = 0.8 bound how sure the fit gets
    assert probs[0] > 0.01 and probs[-1] < 0.99


@pytest.mark.parametrize("calibrator, kind", [(TemperatureScaling, "temperature"), (PlattScaling, "platt")])
def test_state_round_trips_through_json(calibrator, kind):
    scores, labels = _overconfident(2000, 4.0, seed=8)
    fitted = calibrator().fit(scores, labels)
    state = json.loads(json.dumps(fitted.state_dict()))
    assert state["kind"] == kind
    restored = calibrator.from_dict(state)
    assert type(restored) is type(fitted)
    np.testing.assert_array_equal(restored.transform(scores), fitted.transform(scores))
    assert type(fitted).from_dict(state).state_dict() == fitted.state_dict()


def test_a_calibrator_reads_back_only_its_own_state():
    with pytest.raises(ValueError, match="not 'temperature'"):
        TemperatureScaling.from_dict({"kind": "platt", "a": 1.0, "b": 0.0})
    with pytest.raises(ValueError, match="not 'platt'"):
        PlattScaling.from_dict({"kind": "temperature", "temperature": 2.0})


def test_calibrators_reject_bad_input_and_unfitted_use():
    with pytest.raises(RuntimeError, match="not fitted"):
        TemperatureScaling().transform([0.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        PlattScaling().transform([0.0])
    with pytest.raises(ValueError, match="both real and synthetic"):
        TemperatureScaling().fit([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        PlattScaling().fit([1.0, 2.0], [1])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        TemperatureScaling().fit([1.0, 2.0], [0, 3])
    with pytest.raises(ValueError, match="positive"):
        TemperatureScaling(temperature=-1.0)


def test_uninformative_logits_warn_at_the_temperature_bound():
    rng = np.random.default_rng(9)
    labels = np.repeat([0, 1], 200)
    with pytest.warns(UserWarning, match="bound"):
        scaler = TemperatureScaling().fit(-3.0 * (labels - 0.5) + rng.normal(0, 0.1, 400), labels)
    assert scaler.temperature > 100


def test_logit_clips_and_inverts_sigmoid():
    p = np.array([0.0, 1e-9, 0.2, 0.5, 0.9, 1.0])
    z = logit(p)
    assert np.isfinite(z).all()
    assert z[0] == z[1] == pytest.approx(math.log(1e-6 / (1 - 1e-6)))
    np.testing.assert_allclose(expit(z[2:5]), p[2:5], atol=1e-12)
    assert z[-1] == pytest.approx(-z[0])


def test_calibration_report_uses_project_ece_and_brier():
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 2, 500)
    before = np.clip(0.5 * labels + 0.5 * rng.random(500), 0, 1)
    after = np.full(500, labels.mean())
    report = calibration_report(before, after, labels)
    assert set(report) == {"ece_before", "ece_after", "brier_before", "brier_after"}
    assert report["ece_before"] == expected_calibration_error(before, labels)
    assert report["brier_before"] == pytest.approx(np.mean((before - labels) ** 2), abs=1e-15)
    assert report["ece_after"] == pytest.approx(0.0, abs=1e-6)  # the base rate is calibrated in-sample
    assert brier_score(after, labels) == pytest.approx(labels.mean() * (1 - labels.mean()), abs=1e-12)


# ---------------------------------------------------------------------------
# integration: task=train fits the calibrator on val and applies it to test
# ---------------------------------------------------------------------------
def _predictions(logits: np.ndarray, labels: np.ndarray):
    from experiments.evaluation.predictions import Predictions

    n = len(labels)
    return Predictions(expit(logits), labels.astype(np.int64), np.arange(n) % 2, np.arange(n), ["gen_a", "gen_b"])


def _split(rng: np.random.Generator, scale: float, n: int = 400):
    """Labels drawn from sigmoid(z); the detector reports ``scale * z``: over-confident when scale > 1."""
    z = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < expit(z)).astype(np.int64)
    return scale * z, labels


def test_train_fits_temperature_on_val_and_applies_it_to_test(tmp_path, monkeypatch):
    """An over-confident val split (T ~ 3) and an under-confident test split (T ~ 1/2): the stored temperature
    and test/ece_calibrated are those of the val fit; swapping the splits would give T < 1 and other numbers."""
    from omegaconf import open_dict

    from experiments.evaluation.calibration import logit
    from experiments.tasks.train import train
    from experiments.training.kinds import FitResult, LightningDetector
    from tests.conftest import compose_config, make_genimage_tree

    rng = np.random.default_rng(0)
    val = _predictions(*_split(rng, 3.0))
    test = _predictions(*_split(rng, 0.5))
    monkeypatch.setattr(LightningDetector, "fit", lambda self, dm, out, logger, data_error=None: FitResult(None, val, test, 1))
    from pathlib import Path

    # the simulated predictions index no real images: the per-image CSVs have nothing to name
    monkeypatch.setattr("experiments.tasks.train.write_predictions_csv",
                        lambda pred, samples, path: (Path(path).write_text(""), Path(path))[1])
    monkeypatch.setattr("experiments.tasks.train.report_real_sources", lambda *args: {})
    tree = make_genimage_tree(tmp_path / "genimage", n=2, size=32)
    cfg = compose_config(["data=genimage_tiny", f"data.root={tree}", "data.crop_size=32", "data.resize_size=null",
                          "data.num_workers=0", "diagnostics=false"], tmp_path)
    with open_dict(cfg):
        cfg.optimized_metric = None
    train(cfg)

    out = tmp_path / "out"
    stored = json.loads((out / "calibration.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    on_val = TemperatureScaling().fit(logit(val.prob), val.label).temperature
    on_test = TemperatureScaling().fit(logit(test.prob), test.label).temperature
    assert stored["fitted_on"] == "val" and stored["calibrator"]["kind"] == "temperature"
    assert stored["calibrator"]["temperature"] == pytest.approx(on_val) and on_val > 2.0 > 1.0 > on_test
    assert metrics["calibration/temperature"] == pytest.approx(on_val)
    calibrated_test = expit(logit(test.prob) / on_val)
    assert metrics["test/ece_calibrated"] == pytest.approx(expected_calibration_error(calibrated_test, test.label))
    assert metrics["test/ece"] == pytest.approx(expected_calibration_error(test.prob, test.label))
    assert metrics["test/brier_calibrated"] == pytest.approx(np.mean((calibrated_test - test.label) ** 2))
    assert stored["threshold"] == pytest.approx(metrics["threshold/val_calibrated"])
    assert stored["threshold_calibrated"] == pytest.approx(expit(logit(stored["threshold"]) / on_val))


def test_calibration_file_round_trip(tmp_path):
    from experiments.evaluation.calibration import calibrated_probs, read_calibration, write_calibration

    fitted = PlattScaling(a=2.0, b=-1.0)
    path = write_calibration(tmp_path / "calibration.json", fitted, threshold=0.3)
    restored, record = read_calibration(path, PlattScaling)
    assert record["threshold"] == 0.3 and record["fitted_on"] == "val"
    assert record["threshold_calibrated"] == pytest.approx(float(calibrated_probs(fitted, [0.3])[0]))
    probs = np.array([0.1, 0.5, 0.9])
    assert np.allclose(calibrated_probs(restored, probs), calibrated_probs(fitted, probs))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a calibration file"):
        read_calibration(tmp_path / "bad.json", PlattScaling)
    with pytest.raises(ValueError, match="not 'temperature'"):  # the kind's class reads only its own calibrator
        read_calibration(path, TemperatureScaling)


def test_evaluate_keeps_the_training_threshold_unless_recalibration_is_asked():
    """On target data whose own best threshold is 0.3, the metrics use the detector's stored 0.9; recalibration
    on the target's val split adds figures named *_target_calibrated."""
    from pathlib import Path

    from experiments.evaluation.metrics import calibrated_threshold
    from experiments.tasks.evaluate import target_calibrated_metrics, trained_threshold_metrics
    from experiments.inference.loading import LoadedDetector

    rng = np.random.default_rng(1)
    val, test = _predictions(*_split(rng, 1.0)), _predictions(*_split(rng, 1.0))
    record = {"threshold": 0.9, "threshold_calibrated": 0.8, "fitted_on": "val"}
    detector = LoadedDetector(None, None, Path("unused"), calibrator=TemperatureScaling(2.0), calibration=record)
    metrics = trained_threshold_metrics(detector, val, test)
    assert metrics["threshold/val_calibrated"] == 0.9
    assert not any("target_calibrated" in key for key in metrics)
    at_09 = np.mean((test.prob >= 0.9) == test.label)
    assert metrics["test/accuracy_at_val_threshold"] == pytest.approx(at_09)
    assert metrics["calibration/temperature"] == 2.0 and "test/ece_calibrated" in metrics

    target, recalibrated = target_calibrated_metrics(detector, val, test)
    own = calibrated_threshold(val.prob, val.label)
    assert target["threshold/val_target_calibrated"] == pytest.approx(own) and abs(own - 0.9) > 0.1
    assert target["test/accuracy_at_val_threshold_target_calibrated"] == pytest.approx(
        np.mean((test.prob >= own) == test.label))
    assert {"test/ece_target_calibrated", "test/brier_target_calibrated",
            "calibration/temperature_target_calibrated"} <= set(target)
    assert recalibrated is not None and recalibrated.shape == test.prob.shape
