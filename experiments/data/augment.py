"""The CNNDetection training augmentation: random Gaussian blur and random JPEG.

Wang et al. 2020, "CNN-generated images are surprisingly easy to spot... for
now" (CNNDetection, ``data/datasets.py: data_augment``): during training each
image is blurred with probability ``p_blur`` (sigma ~ U[0, 3]) and then JPEG
re-compressed with probability ``p_jpeg`` (quality ~ U{30, ..., 100}). Their
"Blur+JPEG (0.5)" model, which generalises best across generators, uses 0.5 for
both. Blur and JPEG reuse the suite's implementations
(``features.bottleneck.GaussianBottleneck``, ``experiments.data.perturbations``), so
training augmentation and OOD stress tests degrade images the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from experiments.data.perturbations import gaussian_blur, jpeg_roundtrip_pil


class CNNDetectionAugment:
    """PIL -> PIL random blur, then random JPEG; plugs into ``Preprocess(augment=...)``.

    Args:
        p_blur: probability of a Gaussian blur (0 = never).
        p_jpeg: probability of a JPEG round trip (0 = never).
        sigma_range: ``(low, high)`` of the uniform blur sigma, in pixels.
        quality_range: ``(low, high)`` of the uniform integer JPEG quality, both inclusive.

    Randomness comes from ``torch``'s global RNG, or from ``generator`` when one
    is passed to ``__call__``. In DataLoader workers torch's RNG is seeded per
    worker from the main process's RNG, so ``lightning.seed_everything(seed,
    workers=True)`` makes the augmentation reproducible. With both
    probabilities 0 (the default) the image is returned unchanged and no random
    numbers are drawn.
    """

    def __init__(
        self,
        p_blur: float = 0.0,
        p_jpeg: float = 0.0,
        sigma_range: Sequence[float] = (0.0, 3.0),
        quality_range: Sequence[int] = (30, 100),
    ) -> None:
        for name, p in (("p_blur", p_blur), ("p_jpeg", p_jpeg)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"CNNDetectionAugment: {name} must be in [0, 1], got {p}")
        if len(sigma_range) != 2 or len(quality_range) != 2:
            raise ValueError(
                f"CNNDetectionAugment: sigma_range and quality_range are (low, high) pairs, "
                f"got {sigma_range} and {quality_range}"
            )
        sigma_low, sigma_high = (float(v) for v in sigma_range)
        if not 0.0 <= sigma_low <= sigma_high:
            raise ValueError(
                f"CNNDetectionAugment: sigma_range must be (low, high) with 0 <= low <= high, got {sigma_range}"
            )
        quality_low, quality_high = (int(v) for v in quality_range)
        if not 1 <= quality_low <= quality_high <= 100:
            raise ValueError(
                "CNNDetectionAugment: quality_range must be (low, high) with 1 <= low <= high <= 100, "
                f"got {quality_range}"
            )
        self.p_blur = float(p_blur)
        self.p_jpeg = float(p_jpeg)
        self.sigma_range = (sigma_low, sigma_high)
        self.quality_range = (quality_low, quality_high)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"CNNDetectionAugment expects a PIL image, got {type(image).__name__}; place it before ToTensor"
            )
        if self.p_blur > 0 and torch.rand((), generator=generator).item() < self.p_blur:
            low, high = self.sigma_range
            sigma = low + (high - low) * torch.rand((), generator=generator).item()
            image = self.blur(image, sigma)
        if self.p_jpeg > 0 and torch.rand((), generator=generator).item() < self.p_jpeg:
            low, high = self.quality_range
            quality = int(torch.randint(low, high + 1, (), generator=generator))
            image = jpeg_roundtrip_pil(image, quality)
        return image

    @staticmethod
    def blur(image: Image.Image, sigma: float) -> Image.Image:
        """Gaussian blur of a PIL image (rounded back to 8 bits); ``sigma=0`` returns it unchanged."""
        if sigma == 0:
            return image
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        blurred = gaussian_blur(pixels.unsqueeze(0), sigma)[0]
        array = (blurred.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(array)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p_blur={self.p_blur}, p_jpeg={self.p_jpeg}, "
            f"sigma_range={self.sigma_range}, quality_range={self.quality_range})"
        )
