"""The ``radial_angular_logreg`` detector: spectral power distributions + logistic regression.

Corvi et al. (2023), "Intriguing properties of synthetic images: from GANs to
diffusion models": the radial and angular distributions of spectral power
(and the spectrum of the Laplacian noise residual) separate synthetic from
real images well enough for a simple linear classifier. This module wraps the
batched torch features of :mod:`features.radial_angular` in a scikit-learn
transformer so the classifier is an ordinary ``Pipeline`` with ``predict_proba``: the detector is
``conf/model/radial_angular_logreg.yaml``, ``SpectralHistogramFeatures -> StandardScaler -> LogisticRegression``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from detectors.sklearn_base import StatelessImageTransformer, as_image_tensor
from features.radial_angular import RadialAngularHistogram


class SpectralHistogramFeatures(StatelessImageTransformer):
    """Images ``(N, 3, H, W)`` -> spectral power distribution features ``(N, n_features)``.

    Features, in order:

    * ``n_radial`` radial and ``n_angular`` angular power distributions of the
      image's grayscale power spectrum (:class:`RadialAngularHistogram`);
    * with ``use_residual``, ``n_radial`` more: the radial distribution of the
      power spectrum of the Laplacian noise residual.

    With ``log_features`` each value ``h`` becomes ``log10(h + 1e-12)``, which
    turns the orders-of-magnitude spread of spectral power into a scale a
    linear model can use.

    ``X`` is a float numpy array or torch tensor of RGB images in [0, 1],
    channels first, all of one size ``H x W`` (any size >= 2 x 2). The
    transformer is stateless: ``fit`` only validates ``X``. Features are
    computed on CPU under ``torch.no_grad`` in chunks of ``batch_size`` images.
    """

    def __init__(
        self,
        n_radial: int = 64,
        n_angular: int = 64,
        use_residual: bool = True,
        log_power: bool = False,
        log_features: bool = True,
        batch_size: int = 256,
        max_radius: float = math.sqrt(2.0),
    ) -> None:
        self.n_radial = n_radial
        self.n_angular = n_angular
        self.use_residual = use_residual
        self.log_power = log_power
        self.log_features = log_features
        self.batch_size = batch_size
        self.max_radius = max_radius

    def _extractors(self) -> tuple[RadialAngularHistogram, RadialAngularHistogram | None]:
        image = RadialAngularHistogram(self.n_radial, self.n_angular, use_residual=False, log_power=self.log_power,
                                       max_radius=self.max_radius)
        residual = (
            RadialAngularHistogram(self.n_radial, 1, use_residual=True, log_power=self.log_power,
                                   max_radius=self.max_radius)
            if self.use_residual
            else None
        )
        return image, residual

    def transform(self, X) -> np.ndarray:  # noqa: N803 - sklearn naming
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"SpectralHistogramFeatures: batch_size must be a positive int, got {self.batch_size!r}")
        images = as_image_tensor(X)
        image_hist, residual_hist = self._extractors()
        chunks = []
        with torch.no_grad():
            for batch in images.split(self.batch_size):
                parts = [image_hist(batch)]
                if residual_hist is not None:
                    parts.append(residual_hist(batch)[:, : self.n_radial])
                chunks.append(torch.cat(parts, dim=1))
        features = torch.cat(chunks).double().numpy()
        if self.log_features:
            features = np.log10(features + 1e-12)
        return features

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        names = [f"radial_{i:03d}" for i in range(self.n_radial)]
        names += [f"angular_{i:03d}" for i in range(self.n_angular)]
        if self.use_residual:
            names += [f"residual_radial_{i:03d}" for i in range(self.n_radial)]
        return np.asarray(names, dtype=object)
