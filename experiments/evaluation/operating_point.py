"""Operating points chosen on real images only, the deployment threshold of a detector.

A deployed detector runs at one threshold. Chosen as the ``(1 - FPR)`` quantile of the validation split's
*real* scores, it fixes the false-positive rate on real photos without looking at any fake (the protocol of
B-Free's "Pd at 10 % FAR", Guillaro et al., CVPR 2025, and of the low-FPR operating points of Cozzolino et al.,
"Raising the Bar of AI-generated Image Detection with CLIP", CVPRW 2024). Test TPR and FPR at that threshold
then say what a user gets on data the threshold never saw.

Conventions as :mod:`experiments.evaluation.metrics`: scores are P(synthetic), labels real = 0 and synthetic = 1,
and an image is flagged synthetic when ``score >= threshold``.

A spec is written ``fpr@<rate>`` (``eval.operating_point=fpr@0.05``); the run stores what it chose in
``calibration.json`` under :data:`RECORD_KEY` (:func:`operating_point_record`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.errors import UserError

#: key of the operating point in a run's ``calibration.json``
RECORD_KEY = "operating_point"

_SPEC = re.compile(r"^fpr@(?P<rate>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)$")


class BadDeploymentSetting(ValueError, UserError):
    """``eval.operating_point`` or ``eval.abstain`` is not understood; the message names the key."""


@dataclass(frozen=True)
class OperatingPointSpec:
    """A target false-positive rate on real images, parsed from ``fpr@<rate>``."""

    target_fpr: float

    @property
    def name(self) -> str:
        """The spec as written (``fpr@0.05``), the suffix of metric keys (``tpr_at_op``) aside."""
        return f"fpr@{self.target_fpr:g}"


def parse_operating_point(spec: str) -> OperatingPointSpec:
    """``"fpr@0.05"`` -> ``OperatingPointSpec(0.05)``; a ``ValueError`` naming the key for anything else."""
    match = _SPEC.match(str(spec).strip())
    if match is None:
        raise BadDeploymentSetting(f"eval.operating_point={spec!r} is not understood; write fpr@<rate>, e.g. fpr@0.05")
    rate = float(match.group("rate"))
    if not 0.0 < rate < 1.0:
        raise BadDeploymentSetting(f"eval.operating_point={spec!r}: the false-positive rate must lie in (0, 1)")
    return OperatingPointSpec(rate)


def threshold_at_fpr(real_scores: Any, target_fpr: float) -> float:
    """The ``(1 - target_fpr)`` quantile of ``real_scores`` (linear interpolation): about ``target_fpr`` of those
    reals score at or above it. Only real scores enter; a ``ValueError`` when there are none."""
    scores = np.asarray(real_scores, dtype=np.float64).ravel()
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("no finite real score to choose an operating point on (the val split has no real image)")
    return float(np.quantile(scores, 1.0 - float(target_fpr)))


def rates_at_threshold(scores: Any, labels: Any, threshold: float) -> dict[str, float]:
    """``{"tpr": ..., "fpr": ...}`` of the decision ``score >= threshold``; NaN for a class that is absent."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(np.int64)
    flagged = scores >= threshold
    fakes, reals = labels == 1, labels == 0
    tpr = float(flagged[fakes].mean()) if fakes.any() else math.nan
    fpr = float(flagged[reals].mean()) if reals.any() else math.nan
    return {"tpr": tpr, "fpr": fpr}


def operating_point_record(spec: OperatingPointSpec, threshold: float, n_real: int,
                           split: str = "val") -> dict[str, Any]:
    """What a run stores under :data:`RECORD_KEY`: the spec, its threshold on raw P(synthetic), the split and the
    number of real images it was chosen on."""
    return {"spec": spec.name, "target_fpr": spec.target_fpr, "threshold": float(threshold),
            "fitted_on": split, "n_real": int(n_real)}
