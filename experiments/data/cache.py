"""Decode-once cache of preprocessed splits (``data.cache=true``): a decoded pack per split.

Decoding and resizing PNG/JPEG files dominates the data-loading time of small
detectors. With the cache on, each split is decoded and preprocessed once into a
decoded LitData pack (:mod:`experiments.data.shards`, the format ``task=pack``
writes) under ``<cache root>/<key>/``, and read from it afterwards. The key is a hash of

* the preprocessing (``repr`` of :class:`~experiments.data.transforms.Preprocess`,
  equalizer included), and
* the file list: path, size and modification time of every sample, with its
  label and generator,

so adding, removing or rewriting a file, or changing any preprocessing setting,
gives a new key and a fresh cache. ``Preprocess`` returns uint8 tensors, so
cached batches equal uncached ones bit for bit.

Files that cannot be decoded (or are smaller than the crop) are stored as
invalid records: the packed split yields ``None`` for them, so
``collate_skipping`` still counts them as skipped.

The datamodule builds the packs in ``prepare_data`` (Lightning calls it on the local rank 0 of every node),
so with a node-local ``paths.cache_dir`` each node writes its own while the other ranks wait.

Only deterministic preprocessing is cached. A split whose preprocessing draws
random numbers (``random_crop`` or a training augmentation) is read from the
files as before: caching it would freeze one random draw for every epoch.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from experiments.data.layouts import Sample
from experiments.data.shards import META_NAME, PACK_FORMAT, write_pack
from experiments.data.transforms import Preprocess

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
    return file_list_key(f"pack{PACK_FORMAT}|{preprocess!r}", samples)


def cached_pack(split: str, samples: Sequence[Sample], preprocess: Preprocess, cache_root: str | Path, *,
                root: str | Path, class_names: Sequence[str], workers: int | None = None) -> Path:
    """The decoded pack of this split under ``cache_root`` (:func:`cache_key`), written first when missing."""
    folder = Path(cache_root) / cache_key(samples, preprocess)
    if (folder / META_NAME).is_file():
        log.info("data cache hit: %s", folder)
    else:
        log.info("data cache: packing %d decoded images into %s", len(samples), folder)
        write_pack({split: samples}, folder, root, class_names, preprocess=preprocess, workers=workers)
    return folder
