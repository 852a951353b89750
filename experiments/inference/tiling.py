"""A detector's evaluation preprocessing for files, and the grid of crops that ``detect --tile`` scores for an
input much larger than the training crop."""

from __future__ import annotations

import torch

from experiments.data.transforms import ImageTooSmall, Preprocess

#: ``--tile``: at most this many crop positions per axis (so at most 16 crops per image)
MAX_TILES_PER_AXIS = 4


def tile_crops(img, preprocess: Preprocess, max_per_axis: int = MAX_TILES_PER_AXIS) -> tuple[torch.Tensor, float]:
    """``(n, 3, crop, crop)`` crops on an even grid over the equalised, resized image, and the share they cover.

    Adjacent crops overlap when the side is not a multiple of the crop; at most ``max_per_axis`` per axis.
    """
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    if preprocess.equalizer is not None:
        img = preprocess.equalizer(img)
    if preprocess.resize_size is not None and min(img.size) != preprocess.resize_size:
        img = TF.resize(img, preprocess.resize_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    w, h, c = img.size[0], img.size[1], preprocess.crop_size
    if min(w, h) < c:
        raise ImageTooSmall(f"{w}x{h} is smaller than data.crop_size={c}")

    def starts(side: int) -> list[int]:
        n = min(max_per_axis, -(-side // c))
        return sorted({round(i * (side - c) / max(n - 1, 1)) for i in range(n)})

    xs, ys = starts(w), starts(h)
    crops = [TF.pil_to_tensor(img.crop((x, y, x + c, y + c))) for y in ys for x in xs]
    covered = min(1.0, (min(w, (len(xs)) * c) * min(h, len(ys) * c)) / (w * h))
    return torch.stack(crops), covered


def crop_fraction(width: int, height: int, preprocess: Preprocess) -> float:
    """The share of an input of this size that the single centre crop sees (after the resize, if any)."""
    if preprocess.resize_size is not None:
        scale = preprocess.resize_size / max(min(width, height), 1)
        width, height = width * scale, height * scale
    return min(1.0, preprocess.crop_size ** 2 / max(width * height, 1))
