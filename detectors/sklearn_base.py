"""Shared pieces of the scikit-learn detectors: image input checks and a stateless transformer base."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline


def as_image_tensor(X: np.ndarray | torch.Tensor, name: str = "X") -> torch.Tensor:
    """Check and convert ``(N, 3, H, W)`` float images in [0, 1] to a float32 CPU tensor."""
    if isinstance(X, torch.Tensor):
        tensor = X.detach().cpu()
    else:
        array = np.asarray(X)
        if array.dtype == object:
            raise ValueError(f"{name} must be one (N, 3, H, W) array of equally sized images, got a ragged/object array")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if not tensor.is_floating_point():
        raise ValueError(
            f"{name} must hold float images in [0, 1], got dtype {tensor.dtype}; "
            f"convert uint8 images with X.astype('float32') / 255"
        )
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3, H, W) (channels first, RGB), got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty: got 0 images")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = tensor.min().item(), tensor.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{name} must hold images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return tensor


class StatelessImageTransformer(TransformerMixin, BaseEstimator):
    """A transformer of ``(N, 3, H, W)`` images in [0, 1] that learns nothing: ``fit`` only validates ``X``.

    The trainer runs such a ``features`` step batch by batch over a data loader and fits only
    the rest of the pipeline on the stacked feature vectors.
    """

    def fit(self, X, y=None):  # noqa: N803 - sklearn naming
        as_image_tensor(X)
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


def feature_pipeline(features, classifier, scaler=None) -> Pipeline:
    """``features -> [scaler ->] classifier``: the shape of every scikit-learn detector of the suite.

    Each step is an estimator object, so a config builds any combination by ``_target_`` (swap the
    classifier with ``model.estimator.classifier._target_=...``). The ``features`` step must be a
    :class:`StatelessImageTransformer`: the trainer runs it batch by batch and fits only ``pipeline[1:]``.
    Step names: ``features``, ``scale``, ``classifier``.
    """
    steps = [("features", features)]
    if scaler is not None:
        steps.append(("scale", scaler))
    steps.append(("classifier", classifier))
    return Pipeline(steps)
