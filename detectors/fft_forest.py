"""The ``fft_random_forest`` detector: a random forest on the flattened, downsampled 2-D FFT log-magnitude.

SPECTRAFORGE ("Domain-Equalized Frequency-Spatial Fusion for Synthetic
Dermatology Detection"), results table, row "Random Forest, Flattened 2D-FFT"
(in-distribution AUC 0.8701): the classical baseline of the frequency stream.
The centred log-magnitude spectrum of :class:`features.fft_magnitude.FFTMagnitude`
(the same map the CNN frequency stream sees) is average-pooled to a
``grid x grid`` map and flattened, and a random forest (Breiman, 2001,
"Random Forests", Machine Learning 45) classifies the vectors. The detector is
``conf/model/fft_random_forest.yaml``: ``feature_pipeline(FFTGridFeatures, RandomForestClassifier)``,
no scaler (trees are invariant to monotone rescaling of each feature), the forest seeded by the run's ``seed``.

Average pooling keeps every frequency: each cell is the mean log-magnitude of a
band of ``(H / grid) x (W / grid)`` frequencies, so the Nyquist corners where
the checkerboard peaks of transposed-convolution up-sampling lie (Odena et al.,
2016, "Deconvolution and Checkerboard Artifacts") still land in the corner cells.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from detectors.sklearn_base import StatelessImageTransformer, as_image_tensor
from features.fft_magnitude import FFTMagnitude


class FFTGridFeatures(StatelessImageTransformer):
    """Images ``(N, 3, H, W)`` -> pooled FFT log-magnitude vectors ``(N, channels * grid * grid)``.

    Args:
        grid: side of the pooled spectrum (adaptive average pooling); ``grid`` larger
            than the image repeats frequencies rather than failing.
        grayscale: transform the ITU-R 601 luminance (one channel) instead of each RGB channel.
        standardize: rescale each image's spectrum to zero mean and unit variance before pooling
            (:class:`FFTMagnitude`'s option), which removes global brightness and contrast.
        batch_size: images per torch batch.

    ``X`` is a float numpy array or torch tensor of RGB images in [0, 1], channels
    first, all of one size. The transformer is stateless: ``fit`` only validates
    ``X``. Features are computed on CPU under ``torch.no_grad``. Zero frequency sits
    in cell ``(grid // 2, grid // 2)`` for even image sides divisible by ``grid``.
    """

    def __init__(self, grid: int = 16, grayscale: bool = True, standardize: bool = True,
                 batch_size: int = 256) -> None:
        self.grid = grid
        self.grayscale = grayscale
        self.standardize = standardize
        self.batch_size = batch_size

    def _check_params(self) -> None:
        for name in ("grid", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FFTGridFeatures: {name} must be a positive int, got {value!r}")

    def transform(self, X) -> np.ndarray:  # noqa: N803 - sklearn naming
        self._check_params()
        images = as_image_tensor(X)
        fft = FFTMagnitude(grayscale=self.grayscale, standardize=self.standardize)
        chunks = []
        with torch.no_grad():
            for batch in images.split(int(self.batch_size)):
                pooled = F.adaptive_avg_pool2d(fft(batch), int(self.grid))
                chunks.append(pooled.flatten(1))
        return torch.cat(chunks).double().numpy()

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        channels = ["gray"] if self.grayscale else ["r", "g", "b"]
        names = [f"fft_{c}_{i:02d}_{j:02d}" for c in channels for i in range(self.grid) for j in range(self.grid)]
        return np.asarray(names, dtype=object)
