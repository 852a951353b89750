"""Image preprocessing shared by every detector.

Synapse-7 resizes to 256 and centre-crops 224; both sizes are configurable so
CPU runs can use 64 px. ``resize_size=None`` skips resizing and only crops, which
keeps generator up-sampling traces intact (resizing is a known confounder in
this field, Corvi et al. 2023). ImageNet normalisation is not done here: it
belongs to the spatial backbone's input (see ``detectors.base``).
"""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


class ImageTooSmall(ValueError):
    """The image is smaller than the crop after resizing."""


class Preprocess:
    """PIL RGB image -> uint8 tensor ``(3, crop, crop)``.

    Images stay uint8 through the loader and the host-to-device copy (a quarter of the bytes of float32);
    the LightningModule makes them float in [0, 1] on the model's device (``features.as_unit_float``).

    Args:
        crop_size: output side.
        resize_size: short side to resize to first (bicubic, antialiased); None keeps the native resolution.
        random_crop: take a random instead of a centre crop (training only).
        equalizer: optional PIL -> PIL transform applied first (e.g. ``features.equalizer.ExtremeEqualizer``).
        augment: optional PIL -> PIL training augmentation applied after the equalizer.
    """

    def __init__(
        self,
        crop_size: int = 224,
        resize_size: int | None = 256,
        random_crop: bool = False,
        equalizer: Callable[[Image.Image], Image.Image] | None = None,
        augment: Callable[[Image.Image], Image.Image] | None = None,
    ) -> None:
        if resize_size is not None and resize_size < crop_size:
            raise ValueError(f"data.resize_size={resize_size} must be >= data.crop_size={crop_size}")
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.random_crop = random_crop
        self.equalizer = equalizer
        self.augment = augment

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.equalizer is not None:
            img = self.equalizer(img)
        if self.augment is not None:
            img = self.augment(img)
        if self.resize_size is not None and min(img.size) != self.resize_size:
            img = TF.resize(img, self.resize_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        w, h = img.size
        c = self.crop_size
        if min(w, h) < c:
            raise ImageTooSmall(f"{w}x{h} is smaller than data.crop_size={c}")
        if self.random_crop:
            top = int(torch.randint(0, h - c + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - c + 1, (1,), generator=generator))
        else:
            top, left = (h - c) // 2, (w - c) // 2
        img = img.crop((left, top, left + c, top + c))
        return TF.pil_to_tensor(img)

    def __repr__(self) -> str:
        return (
            f"Preprocess(crop_size={self.crop_size}, resize_size={self.resize_size}, "
            f"random_crop={self.random_crop}, equalizer={self.equalizer!r}, augment={self.augment!r})"
        )
