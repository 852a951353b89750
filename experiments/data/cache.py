"""Decode-once disk cache of preprocessed splits (``data.cache=true``).

Decoding and resizing PNG/JPEG files dominates the data-loading time of small
detectors. With the cache on, each split is decoded and preprocessed once and
stored as one uint8 array ``(N, 3, crop, crop)`` (``images.npy``, memory-mapped
when read) plus a validity mask (``ok.npy``) under
``<cache root>/<key>/``. The key is a hash of

* the preprocessing (``repr`` of :class:`~experiments.data.transforms.Preprocess`,
  equalizer included), and
* the file list: path, size and modification time of every sample, with its
  label and generator,

so adding, removing or rewriting a file, or changing any preprocessing setting,
gives a new key and a fresh cache. ``Preprocess`` returns uint8 tensors, so
cached batches equal uncached ones bit for bit.

Files that cannot be decoded (or are smaller than the crop) are stored as
invalid entries: the cached dataset yields ``None`` for them, so
``collate_skipping`` still counts them as skipped.

Only deterministic preprocessing is cached. A split whose preprocessing draws
random numbers (``random_crop`` or a training augmentation) is read from the
files as before: caching it would freeze one random draw for every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from experiments.data.dataset import SampleDataset
from experiments.data.images import UnreadableImage, load_rgb
from experiments.data.layouts import Sample
from experiments.data.transforms import ImageTooSmall, Preprocess

log = logging.getLogger(__name__)

#: Bump when the on-disk format changes.
CACHE_VERSION = 1


def is_cacheable(preprocess: Preprocess) -> bool:
    """True when ``preprocess`` is deterministic (no random crop, no augmentation)."""
    return not preprocess.random_crop and preprocess.augment is None


def file_list_key(header: str, samples: Iterable[Sample], extra: Iterable[str] = ()) -> str:
    """Hash of ``header`` and of every sample's path, size, mtime, label and generator (plus one ``extra``
    string per sample, e.g. its split): adding, removing or rewriting a file changes the key."""
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_VERSION}|{header}\n".encode())
    extras = iter(extra)
    for s in samples:
        try:
            st = os.stat(s.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{os.path.abspath(s.path)}|{stamp}|{s.label}|{s.generator}|{next(extras, '')}\n".encode())
    return digest.hexdigest()[:24]


def cache_key(samples: Sequence[Sample], preprocess: Preprocess) -> str:
    """Hash of the preprocessing settings and of every file's path, size, mtime, label and generator."""
    return file_list_key(repr(preprocess), samples)


def build_cache(samples: Sequence[Sample], preprocess: Preprocess, folder: Path) -> None:
    """Decode and preprocess every sample into ``folder`` (written to a temporary folder, then renamed)."""
    c = preprocess.crop_size
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
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
        np.save(tmp / "ok.npy", ok)
        (tmp / "meta.json").write_text(json.dumps(
            {"version": CACHE_VERSION, "n": len(samples), "bad": int((~ok).sum()), "preprocess": repr(preprocess)},
            indent=2))
        try:
            tmp.rename(folder)
        except OSError:  # another process (e.g. a DDP rank) finished the same cache first
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_split(samples: Sequence[Sample], preprocess: Preprocess, cache_root: str | Path) -> Path:
    """The cache folder of this split, built first if it is missing or stale."""
    folder = Path(cache_root) / cache_key(samples, preprocess)
    if (folder / "meta.json").exists():
        log.info("data cache hit: %s", folder)
    else:
        log.info("data cache: decoding %d images into %s", len(samples), folder)
        build_cache(samples, preprocess, folder)
    return folder


class CachedImageDataset(SampleDataset):
    """Drop-in for :class:`~experiments.data.dataset.ImageDataset` that reads a cache folder.

    Items are the same dicts (``image`` uint8, ``label``, ``generator``, ``index``);
    invalid entries yield ``None``. A DataLoader asks for whole batches
    (:meth:`__getitems__`): one gather from the uint8 array per batch, not one
    Python call per image. The array is memory-mapped lazily, once per process,
    so DataLoader workers share the page cache instead of copies.
    """

    def __init__(self, samples: Sequence[Sample], folder: str | Path, generator_names: Sequence[str]) -> None:
        super().__init__(samples, generator_names)
        self.folder = Path(folder)
        self.ok = np.load(self.folder / "ok.npy")
        if len(self.ok) != len(self.samples):
            raise ValueError(f"cache {self.folder} holds {len(self.ok)} images, the split has {len(self.samples)}")
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.folder / "images.npy", mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None  # re-opened in each worker
        return state

    @property
    def n_bad(self) -> int:
        return int((~self.ok).sum())

    def __getitem__(self, index: int) -> dict | None:
        if not self.ok[index]:
            return None
        return self.item(torch.from_numpy(np.array(self.images[index])), index)

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """The collated batch of ``indices`` (see :func:`~experiments.data.dataset.collate_skipping`): the valid
        entries gathered from the array in one read, in the sampler's order, the invalid ones counted."""
        index = np.asarray(indices, dtype=np.int64)
        valid = index[self.ok[index]]
        images = torch.from_numpy(self.images[valid]) if len(valid) else torch.empty(0, dtype=torch.uint8)
        return self.batch(images, torch.from_numpy(valid), skipped=len(index) - len(valid))
