"""The decode cache that decoded packs replaced, as a benchmark reference only (``make bench``).

Before ``data.cache=true`` wrote a decoded LitData pack (:mod:`experiments.data.crops`), it stored each split
as one uint8 array ``(N, 3, crop, crop)`` in a ``.npy`` file, decoded in one process, memory-mapped when read,
and a batch was one fancy-index of that array. This module is that code cut to what the timings need (no
cache key, no metadata), so ``make bench`` can show the pack's build and read rates beside it; no product
path uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from experiments.data.dataset import SampleDataset
from experiments.data.images import UnreadableImage, load_rgb
from experiments.data.layouts import Sample
from experiments.data.transforms import ImageTooSmall, Preprocess


def build_array(samples: Sequence[Sample], preprocess: Preprocess, folder: Path) -> None:
    """Decode and preprocess every sample, in this process, into ``folder/images.npy`` and ``ok.npy``."""
    c = preprocess.crop_size
    folder.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(samples), 3, c, c))
    ok = np.zeros(len(samples), dtype=bool)
    for i, s in enumerate(samples):
        try:
            images[i] = preprocess(load_rgb(s.path)).numpy()
            ok[i] = True
        except (UnreadableImage, ImageTooSmall):
            images[i] = 0
    images.flush()
    del images
    np.save(folder / "ok.npy", ok)


class ArrayDataset(SampleDataset):
    """The memory-mapped array read a batch at a time (``__getitems__``: one gather per batch)."""

    def __init__(self, samples: Sequence[Sample], folder: Path, generator_names: Sequence[str]) -> None:
        super().__init__(samples, generator_names)
        self.folder = Path(folder)
        self.ok = np.load(self.folder / "ok.npy")
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.folder / "images.npy", mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __getitem__(self, index: int) -> dict | None:
        if not self.ok[index]:
            return None
        return self.item(torch.from_numpy(np.array(self.images[index])), index)

    def __getitems__(self, indices: Sequence[int]) -> dict:
        index = np.asarray(indices, dtype=np.int64)
        valid = index[self.ok[index]]
        images = torch.from_numpy(self.images[valid]) if len(valid) else torch.empty(0, dtype=torch.uint8)
        return self.batch(images, torch.from_numpy(valid), skipped=len(index) - len(valid))
