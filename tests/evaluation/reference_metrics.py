"""Reference values from scikit-learn that the metric tests compare the suite's engine with."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def sklearn_eer(probs: np.ndarray, labels: np.ndarray) -> float:
    """The equal error rate: where scikit-learn's ROC polyline crosses the line FPR = FNR (fpr + tpr = 1)."""
    fpr, tpr, _ = skm.roc_curve(labels, probs, drop_intermediate=False)
    for x0, y0, x1, y1 in zip(fpr[:-1], tpr[:-1], fpr[1:], tpr[1:]):
        step = (x1 - x0) + (y1 - y0)
        t = (1.0 - x0 - y0) / step
        if 0.0 <= t <= 1.0:
            return float(x0 + t * (x1 - x0))
    raise AssertionError("ROC never crosses fpr + tpr = 1")
