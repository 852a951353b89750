"""Training augmentations: CNNDetection's random blur and JPEG, and SAFE's crop, flip, rotation, jitter and masking.

SAFE (Li et al., KDD 2025, "Improving Synthetic Image Detection Towards Generalization: An Image Transformation
Perspective"): :class:`SAFEAugment`, with :func:`random_patch_mask`.

CNNDetection: Wang et al. 2020, "CNN-generated images are surprisingly easy to spot... for
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
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

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


def random_patch_mask(pixels: np.ndarray, ratio: float, patch_size: int,
                      generator: torch.Generator | None = None) -> np.ndarray:
    """``pixels`` ``(H, W[, C])`` with ``int(H * W * ratio / patch_size**2)`` distinct cells of the
    ``patch_size`` grid set to 0 (at most every whole cell; a remainder strip past the last whole cell is kept).

    SAFE's random patch masking (Li et al., KDD 2025): the cells are drawn without replacement, so the masked
    share of an image whose sides are multiples of ``patch_size`` is ``ratio`` rounded down to whole cells.
    """
    if patch_size < 1 or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"random_patch_mask: patch_size must be >= 1 and ratio in [0, 1], got {patch_size}, {ratio}")
    h, w = pixels.shape[:2]
    rows, cols = h // patch_size, w // patch_size
    count = min(int(h * w * ratio / patch_size**2), rows * cols)
    out = pixels.copy()
    if count == 0:
        return out
    cells = torch.randperm(rows * cols, generator=generator)[:count].numpy()
    for cell in cells:
        top, left = (cell // cols) * patch_size, (cell % cols) * patch_size
        out[top:top + patch_size, left:left + patch_size] = 0
    return out


class SAFEAugment:
    """PIL -> PIL: SAFE's training transformations (Li et al., KDD 2025; github.com/Ouxiang-Li/SAFE,
    ``data/datasets.py``), in their order: random crop at native resolution, horizontal flip, random rotation,
    colour jitter, random patch masking.

    Args:
        crop_size: side of the random crop, taken first, at native resolution (no resize: "crop, not resize");
            an image smaller than it is padded with black around it first (their ``pad_if_needed``). ``None``
            leaves cropping to ``Preprocess`` (the rotation then turns the whole image).
        p_flip: probability of a horizontal flip (0.5).
        degrees: rotation angle drawn uniformly from ``[-degrees, degrees]`` (180), nearest-neighbour, corners
            filled with black, the image size kept (``RandomRotation(180)``).
        brightness, contrast, saturation: colour jitter: each factor uniform in ``[max(0, 1 - v), 1 + v]``,
            applied in a random order (``ColorJitter(0.5, 0.5, 0.5)``); 0 turns one off.
        p_mask: probability of masking an image (0.5).
        mask_ratio: ``(low, high)`` of the uniform share of the image masked (``(0.0, 0.75)``).
        mask_patch_size: side of the masked square cells (16), on a grid aligned with the crop.

    Randomness comes from ``torch``'s global RNG, or from ``generator`` when one is passed to ``__call__``
    (seeded per DataLoader worker, as for :class:`CNNDetectionAugment`).
    """

    def __init__(
        self,
        crop_size: int | None = None,
        p_flip: float = 0.5,
        degrees: float = 180.0,
        brightness: float = 0.5,
        contrast: float = 0.5,
        saturation: float = 0.5,
        p_mask: float = 0.5,
        mask_ratio: Sequence[float] = (0.0, 0.75),
        mask_patch_size: int = 16,
    ) -> None:
        for name, p in (("p_flip", p_flip), ("p_mask", p_mask)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"SAFEAugment: {name} must be in [0, 1], got {p}")
        if len(mask_ratio) != 2 or not 0.0 <= float(mask_ratio[0]) <= float(mask_ratio[1]) <= 1.0:
            raise ValueError(f"SAFEAugment: mask_ratio must be (low, high) with 0 <= low <= high <= 1, got {mask_ratio}")
        if min(brightness, contrast, saturation, degrees) < 0 or int(mask_patch_size) < 1:
            raise ValueError("SAFEAugment: degrees and the jitter strengths must be >= 0 and mask_patch_size >= 1")
        if crop_size is not None and int(crop_size) < 1:
            raise ValueError(f"SAFEAugment: crop_size must be a positive side or null, got {crop_size}")
        self.crop_size = None if crop_size is None else int(crop_size)
        self.p_flip, self.degrees = float(p_flip), float(degrees)
        self.jitter = {"brightness": float(brightness), "contrast": float(contrast), "saturation": float(saturation)}
        self.p_mask = float(p_mask)
        self.mask_ratio = (float(mask_ratio[0]), float(mask_ratio[1]))
        self.mask_patch_size = int(mask_patch_size)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(f"SAFEAugment expects a PIL image, got {type(image).__name__}; place it before ToTensor")
        image = image.convert("RGB")
        uniform = lambda low, high: low + (high - low) * torch.rand((), generator=generator).item()  # noqa: E731
        if self.crop_size is not None:
            image = self.random_crop(image, self.crop_size, generator)
        if self.p_flip > 0 and torch.rand((), generator=generator).item() < self.p_flip:
            image = TF.horizontal_flip(image)
        if self.degrees > 0:
            image = TF.rotate(image, uniform(-self.degrees, self.degrees), interpolation=InterpolationMode.NEAREST,
                              fill=0)
        adjust = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
                  "saturation": TF.adjust_saturation}
        names = list(self.jitter)
        for i in torch.randperm(len(names), generator=generator).tolist():
            strength = self.jitter[names[i]]
            if strength > 0:
                image = adjust[names[i]](image, uniform(max(0.0, 1.0 - strength), 1.0 + strength))
        if self.p_mask > 0 and torch.rand((), generator=generator).item() < self.p_mask:
            ratio = uniform(*self.mask_ratio)
            image = Image.fromarray(random_patch_mask(np.asarray(image), ratio, self.mask_patch_size, generator))
        return image

    @staticmethod
    def random_crop(image: Image.Image, size: int, generator: torch.Generator | None = None) -> Image.Image:
        """A ``size x size`` crop at a uniform position; a smaller image is first centred on a black canvas."""
        w, h = image.size
        if w < size or h < size:
            canvas = Image.new("RGB", (max(w, size), max(h, size)))
            canvas.paste(image, ((canvas.width - w) // 2, (canvas.height - h) // 2))
            image, (w, h) = canvas, canvas.size
        top = int(torch.randint(0, h - size + 1, (), generator=generator))
        left = int(torch.randint(0, w - size + 1, (), generator=generator))
        return image.crop((left, top, left + size, top + size))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, p_flip={self.p_flip}, degrees={self.degrees}, "
            f"jitter={self.jitter}, p_mask={self.p_mask}, mask_ratio={self.mask_ratio}, "
            f"mask_patch_size={self.mask_patch_size})"
        )
