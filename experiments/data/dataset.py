"""Map-style dataset over scanned samples that skips and counts unreadable files."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from experiments.data.images import UnreadableImage, load_rgb
from experiments.data.layouts import Sample
from experiments.data.transforms import ImageTooSmall, Preprocess


class SampleDataset(Dataset):
    """Items are ``{"image": (3,H,W) uint8, "label": float, "generator": int, "index": int}``, or ``None`` for
    an image that cannot be used; subclasses say where the image comes from (:meth:`__getitem__`)."""

    def __init__(self, samples: Sequence[Sample], generator_names: Sequence[str]) -> None:
        self.samples = list(samples)
        self.generator_index = {g: i for i, g in enumerate(generator_names)}
        self.label_values = torch.tensor([float(s.label) for s in self.samples])
        self.generator_ids = torch.tensor([self.generator_index[s.generator] for s in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        raise NotImplementedError

    def item(self, image: torch.Tensor, index: int) -> dict:
        """The batch entry of sample ``index`` with its preprocessed ``image``."""
        sample = self.samples[index]
        return {
            "image": image,
            "label": torch.tensor(float(sample.label)),
            "generator": torch.tensor(self.generator_index[sample.generator]),
            "index": torch.tensor(index),
        }

    def batch(self, images: torch.Tensor, index: torch.Tensor, skipped: int = 0) -> dict:
        """A collated batch of the samples ``index`` (int64) with their stacked ``images``; ``skipped`` counts
        the requested samples that could not be used (the same dict :func:`collate_skipping` makes)."""
        if len(index) == 0:
            return {"image": torch.empty(0), "skipped": torch.tensor(skipped), "empty": True}
        return {"image": images, "label": self.label_values[index], "generator": self.generator_ids[index],
                "index": index, "skipped": torch.tensor(skipped)}

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([s.label for s in self.samples])


class ImageDataset(SampleDataset):
    """Decodes and preprocesses each file on access.

    A file that cannot be decoded, or is smaller than the crop, yields ``None``;
    :func:`collate_skipping` drops it and reports the count in the batch, so a
    bad file never stops an epoch and is never skipped silently.
    """

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess, generator_names: Sequence[str]) -> None:
        super().__init__(samples, generator_names)
        self.preprocess = preprocess

    def __getitem__(self, index: int) -> dict | None:
        try:
            image = self.preprocess(load_rgb(self.samples[index].path))
        except (UnreadableImage, ImageTooSmall):
            return None
        return self.item(image, index)


def collate_skipping(items: list[dict | None] | dict) -> dict:
    """``default_collate`` over the readable items; ``batch["skipped"]`` counts the dropped ones.

    A dataset that reads whole batches (``__getitems__``) hands over a batch dict already; it passes unchanged.
    """
    if isinstance(items, dict):
        return items
    good = [it for it in items if it is not None]
    skipped = len(items) - len(good)
    if not good:
        return {"image": torch.empty(0), "skipped": torch.tensor(skipped), "empty": True}
    batch = default_collate(good)
    batch["skipped"] = torch.tensor(skipped)
    return batch


def upscale_shrunk(original, image, upscale_below: int | None):
    """``(image, upscaled)``: a perturbed ``image`` whose short side fell below ``upscale_below`` while its
    ``original`` file was large enough, resized up (bicubic) to it; unchanged otherwise (or when ``None``)."""
    upscaled = upscale_below is not None and min(image.size) < upscale_below <= min(original.size)
    if upscaled:
        image = TF.resize(image, upscale_below, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return image, upscaled


class PerturbedImageDataset(ImageDataset):
    """:class:`ImageDataset` whose files are perturbed before preprocessing (deployment order of the OOD stress
    test): decode, ``perturb(image, index)`` on the PIL image at its native size, then ``preprocess``
    (equalizer included).

    ``upscale_below``: a perturbed image whose short side fell below it (a laundering crop or resize of a file
    that was large enough) is resized up (bicubic) to it, and its item says ``upscaled``; without it such an
    image is skipped as too small. Files already below it before the perturbation are skipped either way."""

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess, generator_names: Sequence[str],
                 perturb: Callable[[Image.Image, int], Image.Image], upscale_below: int | None = None) -> None:
        super().__init__(samples, preprocess, generator_names)
        self.perturb = perturb
        self.upscale_below = upscale_below

    def __getitem__(self, index: int) -> dict | None:
        try:
            original = load_rgb(self.samples[index].path)
            image, upscaled = upscale_shrunk(original, self.perturb(original, index), self.upscale_below)
            item = self.item(self.preprocess(image), index)
        except (UnreadableImage, ImageTooSmall):
            return None
        item["upscaled"] = torch.tensor(upscaled)
        return item
