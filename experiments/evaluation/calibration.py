"""Post-hoc calibration of P(synthetic), fitted on the validation split only.

A calibrator is fitted once, on validation scores and labels, and then applied
unchanged to any other split: ``transform`` never refits. Its state is a few plain
floats (``state_dict``), so it can be stored as JSON next to a run and rebuilt with
the class's own ``from_dict``. A detector's kind (``experiments.training.kinds``) holds the class it is
calibrated with: fitting and reading ``calibration.json`` back both go through that class.

* :class:`TemperatureScaling` divides a detector's logit by one temperature
  (Guo et al., 2017), for the neural detectors.
* :class:`PlattScaling` fits a logistic map ``sigmoid(a * s + b)`` of any score
  (Platt, 1999), for the scikit-learn pipelines.

Labels are real = 0 and synthetic = 1, as everywhere in :mod:`experiments.evaluation.metrics`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import optimize, special

from experiments.evaluation.abstention import ABSTAIN_KEY
from experiments.evaluation.metrics import as_scores_and_labels, expected_calibration_error
from experiments.evaluation.operating_point import RECORD_KEY
from experiments.evaluation.score_counts import as_flat_numpy, finite_scores_and_labels

#: Temperatures are searched in ``[1 / TEMPERATURE_BOUND, TEMPERATURE_BOUND]``.
TEMPERATURE_BOUND = 1e3


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def logit(p: Any, eps: float = 1e-6) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]`` (so 0 and 1 stay finite)."""
    clipped = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(clipped) - np.log1p(-clipped)


def _fit_inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Finite float64 scores and 0/1 float64 labels of equal length, both classes present."""
    s, y = finite_scores_and_labels(scores, labels)
    if not 0 < y.sum() < y.size:
        raise ValueError("fitting a calibrator needs both real and synthetic validation samples")
    return s, y.astype(np.float64)


def _transform_input(scores: Any) -> np.ndarray:
    s = as_flat_numpy(scores).astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores must not contain NaN")
    return s


def _mean_log_loss(z: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy of ``sigmoid(z)`` against (possibly soft) targets, computed stably."""
    return float(np.mean(np.logaddexp(0.0, z) - targets * z))


def _check_kind(state: Mapping[str, Any], kind: str) -> None:
    if state.get("kind", kind) != kind:
        raise ValueError(f"state is of a {state['kind']!r} calibrator, not {kind!r}")


class Calibrator(Protocol):
    """What every calibrator offers."""

    #: the name stored in its state (``"kind"`` of ``calibration.json``) and shown in figure legends.
    kind: str

    def fit(self, val_scores: Any, val_labels: Any) -> Calibrator: ...

    def transform(self, scores: Any) -> np.ndarray: ...

    def state_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Calibrator: ...


# ---------------------------------------------------------------------------
# temperature scaling
# ---------------------------------------------------------------------------
class TemperatureScaling:
    """``P(synthetic) = sigmoid(logit / T)`` with one temperature ``T > 0`` fitted on validation data.

    Guo, Pleiss, Sun & Weinberger (2017), "On Calibration of Modern Neural Networks",
    ICML, PMLR 70:1321-1330: the temperature minimises the negative log-likelihood of
    the validation labels; dividing by ``T`` never changes the ranking of the scores,
    so AUROC and the ROC curve are unchanged. Over-confident detectors get ``T > 1``.

    ``fit`` minimises the mean NLL over ``log T`` in ``[-log(1000), log(1000)]`` with
    bounded Brent search (``scipy.optimize.minimize_scalar``); the NLL is convex in
    ``1 / T``, hence unimodal in ``log T``. A fit that ends on a bound (scores that
    are uninformative or anti-correlated with the labels) warns.
    """

    kind = "temperature"

    def __init__(self, temperature: float | None = None) -> None:
        if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {temperature}")
        self.temperature = None if temperature is None else float(temperature)

    def fit(self, val_logits: Any, val_labels: Any) -> TemperatureScaling:
        """Fit the temperature on validation logits and labels only; returns ``self``."""
        logits, labels = _fit_inputs(val_logits, val_labels)
        bound = math.log(TEMPERATURE_BOUND)
        result = optimize.minimize_scalar(
            lambda log_t: _mean_log_loss(logits * math.exp(-log_t), labels),
            bounds=(-bound, bound), method="bounded", options={"xatol": 1e-9},
        )
        if abs(abs(result.x) - bound) < 1e-3:
            warnings.warn(f"temperature fit reached its bound (T = {math.exp(result.x):.4g}); "
                          "are the validation logits informative?", UserWarning, stacklevel=2)
        self.temperature = float(math.exp(result.x))
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated P(synthetic) of ``logits`` with the fitted temperature (no refitting)."""
        if self.temperature is None:
            raise RuntimeError("TemperatureScaling is not fitted; call fit(val_logits, val_labels) first")
        return special.expit(_transform_input(logits) / self.temperature)

    def state_dict(self) -> dict[str, Any]:
        """``{"kind": "temperature", "temperature": T}``, plain JSON-serialisable values."""
        return {"kind": self.kind, "temperature": self.temperature}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> TemperatureScaling:
        """Rebuild from :meth:`state_dict`."""
        _check_kind(state, cls.kind)
        temperature = state["temperature"]
        return cls(None if temperature is None else float(temperature))

    def __repr__(self) -> str:
        return f"TemperatureScaling(temperature={self.temperature})"


# ---------------------------------------------------------------------------
# Platt scaling
# ---------------------------------------------------------------------------
class PlattScaling:
    """``P(synthetic) = sigmoid(a * score + b)`` fitted on validation scores (Platt scaling).

    Platt (1999), "Probabilistic outputs for support vector machines and comparisons
    to regularized likelihood methods", in Advances in Large Margin Classifiers, MIT
    Press, pp. 61-74. As in the paper, the fit maximises the likelihood of the
    regularised targets ``(N+ + 1) / (N+ + 2)`` for synthetic and ``1 / (N- + 2)`` for
    real samples, which keeps ``a`` finite on separable validation data
    (``smooth_targets=False`` uses the hard 0/1 labels). Platt writes
    ``1 / (1 + exp(A f + B))``; here ``a = -A``, ``b = -B``.

    ``score`` is any real-valued score (a decision function, a logit, or
    :func:`logit` of a probability). The NLL is minimised with L-BFGS on standardised
    scores, so the fit does not depend on the scale of the scores.
    """

    kind = "platt"

    def __init__(self, a: float | None = None, b: float | None = None, smooth_targets: bool = True) -> None:
        if (a is None) != (b is None):
            raise ValueError("give both a and b, or neither")
        self.a = None if a is None else float(a)
        self.b = None if b is None else float(b)
        self.smooth_targets = bool(smooth_targets)

    def _targets(self, labels: np.ndarray) -> np.ndarray:
        if not self.smooth_targets:
            return labels
        n_pos = labels.sum()
        n_neg = labels.size - n_pos
        return np.where(labels == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def fit(self, val_scores: Any, val_labels: Any) -> PlattScaling:
        """Fit ``a`` and ``b`` on validation scores and labels only; returns ``self``."""
        scores, labels = _fit_inputs(val_scores, val_labels)
        targets = self._targets(labels)
        centre = float(scores.mean())
        spread = float(scores.std()) or 1.0
        x = (scores - centre) / spread

        def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
            z = params[0] * x + params[1]
            residual = special.expit(z) - targets
            return _mean_log_loss(z, targets), np.array([np.mean(residual * x), np.mean(residual)])

        prior = math.log((labels.sum() + 1.0) / (labels.size - labels.sum() + 1.0))
        result = optimize.minimize(loss_and_grad, np.array([1.0, prior]), jac=True, method="L-BFGS-B",
                                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 1000})
        a_std, b_std = (float(v) for v in result.x)
        self.a = a_std / spread
        self.b = b_std - a_std * centre / spread
        return self

    def transform(self, scores: Any) -> np.ndarray:
        """Calibrated P(synthetic) of ``scores`` with the fitted ``a`` and ``b`` (no refitting)."""
        if self.a is None or self.b is None:
            raise RuntimeError("PlattScaling is not fitted; call fit(val_scores, val_labels) first")
        return special.expit(self.a * _transform_input(scores) + self.b)

    def state_dict(self) -> dict[str, Any]:
        """``{"kind": "platt", "a": a, "b": b, "smooth_targets": bool}``, plain JSON-serialisable values."""
        return {"kind": self.kind, "a": self.a, "b": self.b, "smooth_targets": self.smooth_targets}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> PlattScaling:
        """Rebuild from :meth:`state_dict`."""
        _check_kind(state, cls.kind)
        a, b = state["a"], state["b"]
        return cls(None if a is None else float(a), None if b is None else float(b),
                   bool(state.get("smooth_targets", True)))

    def __repr__(self) -> str:
        return f"PlattScaling(a={self.a}, b={self.b}, smooth_targets={self.smooth_targets})"


# ---------------------------------------------------------------------------
# judging a calibrator
# ---------------------------------------------------------------------------
def brier_score(probs: Any, labels: Any) -> float:
    """Mean squared error of P(synthetic) against the 0/1 labels (Brier, 1950); NaN for empty input."""
    scores, targets = as_scores_and_labels(probs, labels)
    if scores.numel() == 0:
        return float("nan")
    return float(np.mean((scores.numpy() - targets.numpy()) ** 2))


def calibration_report(probs_before: Any, probs_after: Any, labels: Any) -> dict[str, float]:
    """ECE (:func:`experiments.evaluation.metrics.expected_calibration_error`) and Brier score of
    P(synthetic) before and after calibration, on the same labels (e.g. the test split):
    ``ece_before``, ``ece_after``, ``brier_before``, ``brier_after``."""
    return {
        "ece_before": expected_calibration_error(probs_before, labels),
        "ece_after": expected_calibration_error(probs_after, labels),
        "brier_before": brier_score(probs_before, labels),
        "brier_after": brier_score(probs_after, labels),
    }


# ---------------------------------------------------------------------------
# the calibration of a run: fitted on val, stored beside the weights
# ---------------------------------------------------------------------------
#: File name of a run's calibration, beside its weights (and an MLflow artifact at the run's root).
CALIBRATION_FILE = "calibration.json"


def calibrated_probs(calibrator: Calibrator, probs: Any) -> np.ndarray:
    """Calibrated P(synthetic) of raw P(synthetic): both calibrators map ``logit(p)`` (the detector's logit for
    a sigmoid head; the log-odds of ``predict_proba`` for a scikit-learn pipeline)."""
    return calibrator.transform(logit(probs))


def fit_val_calibration(calibrator: type[Calibrator], val_probs: Any, val_labels: Any) -> Calibrator:
    """A ``calibrator`` (the class) fitted on the validation split's P(synthetic) and labels only (never on test).

    Temperature scaling (Guo et al., 2017) and Platt scaling (Platt, 1999) both fit ``logit(p)``.
    """
    return calibrator().fit(logit(val_probs), val_labels)


def calibration_metrics(calibrator: Calibrator, test_probs: Any, test_labels: Any,
                        prefix: str = "test", suffix: str = "calibrated") -> dict[str, float]:
    """``<prefix>/ece``, ``<prefix>/brier`` (raw P) and ``<prefix>/ece_<suffix>``, ``<prefix>/brier_<suffix>``
    (P after ``calibrator``), plus the calibrator's parameters as ``calibration/<name>`` (``<suffix>`` other
    than "calibrated" is appended to those names too)."""
    report = calibration_report(test_probs, calibrated_probs(calibrator, test_probs), test_labels)
    out = {f"{prefix}/ece": report["ece_before"], f"{prefix}/brier": report["brier_before"],
           f"{prefix}/ece_{suffix}": report["ece_after"], f"{prefix}/brier_{suffix}": report["brier_after"]}
    tail = "" if suffix == "calibrated" else f"_{suffix}"
    for key, value in calibrator.state_dict().items():
        if isinstance(value, float):
            out[f"calibration/{key}{tail}"] = value
    return out


def calibration_record(calibrator: Calibrator, threshold: float, split: str = "val",
                       operating_point: Mapping[str, Any] | None = None,
                       abstention: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``calibration.json`` holds: the calibrator's state, the decision threshold chosen on the same split on
    raw P(synthetic) (``threshold``), the same decision on calibrated P (``threshold_calibrated``; both
    calibrators are increasing maps when fitted on informative scores, so the decisions agree) and the split.

    ``operating_point`` (:func:`~experiments.evaluation.operating_point.operating_point_record`) and
    ``abstention`` (:meth:`~experiments.evaluation.abstention.AbstentionBand.record`), when given, are stored
    under :data:`~experiments.evaluation.operating_point.RECORD_KEY` and
    :data:`~experiments.evaluation.abstention.ABSTAIN_KEY`; files written without them still read back."""
    record = {"calibrator": calibrator.state_dict(), "fitted_on": split, "threshold": float(threshold),
              "threshold_calibrated": float(calibrated_probs(calibrator, [threshold])[0])}
    if operating_point is not None:
        record[RECORD_KEY] = dict(operating_point)
    if abstention is not None:
        record[ABSTAIN_KEY] = dict(abstention)
    return record


def write_calibration(path: Any, calibrator: Calibrator, threshold: float, split: str = "val",
                      operating_point: Mapping[str, Any] | None = None,
                      abstention: Mapping[str, Any] | None = None) -> Any:
    """Write :func:`calibration_record` as JSON to ``path``; return ``path``."""
    path = Path(path)
    record = calibration_record(calibrator, threshold, split, operating_point, abstention)
    path.write_text(json.dumps(record, indent=2))
    return path


def read_calibration(path: Any, calibrator: type[Calibrator]) -> tuple[Calibrator, dict[str, Any]]:
    """``(calibrator, record)`` of a ``calibration.json`` written by :func:`write_calibration`, rebuilt by the
    ``calibrator`` class of the detector's kind (a ``ValueError`` when the file holds another calibrator)."""
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict) or "calibrator" not in record:
        raise ValueError(f"{path} is not a calibration file (no 'calibrator' entry); "
                         "re-run task=train to write one")
    return calibrator.from_dict(record["calibrator"]), record
