"""Sharded, streamable copies of a dataset's splits, written and read with LitData (Lightning AI, ``litdata``).

:func:`write_pack` writes each split once, in parallel, as LitData chunks under ``<out>/<split>/``; ``out`` is
a folder or an object-store URL (``s3://...``, as LitData supports). An encoded or remote pack is written by
``litdata.optimize`` (one process per core by default), a local decoded pack by LitData's ``BinaryWriter``
with each file read once (:func:`~experiments.data.crops.write_crops`). Every record holds

* ``data``: the file's bytes, ``ok`` (0 for a file that cannot be decoded), ``index`` (its place in the
  split), ``label``, ``generator``, ``split``, ``relpath`` (relative to ``data.root``) and ``sha256`` of the
  file's bytes (encoded pack, the default).

A decoded pack (``data.cache=true``) is one flat uint8 stream in LitData's ``TokensLoader`` format: a block of
``3 * crop * crop`` bytes per sample, its crop (zeros if unusable), in index order; labels and generators come
from the manifest, the unusable samples from ``pack.json``, and a batch is one gather (:class:`TokenChunks`).

Beside the chunks, ``pack.json`` holds what a reader needs without walking any folder (the mode, the
preprocessing of a decoded pack, the generators, the class names, the unusable files of each split) and
``manifest.csv`` the checksummed file list (:mod:`experiments.data.integrity`), whose rows are the splits'
samples in index order.

:class:`PackedSplit` reads one split. An encoded or remote pack is a ``litdata.StreamingDataset`` (shuffling,
DDP / multi-node sharding by rank, resumable iteration through ``StreamingDataLoader.state_dict``) with a
transform that decodes and preprocesses an encoded record with the same
:class:`~experiments.data.transforms.Preprocess` as file loading, so batches are identical to those read from
the files; :class:`CollateRecords` stacks a batch and counts the unusable records as skipped, as
:func:`~experiments.data.dataset.collate_skipping` does for files. A local decoded pack is a map-style
dataset whose batches are one gather from the memory-mapped chunks (:meth:`PackedSplit.__getitems__`), shuffled
or not by the loader's sampler.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from experiments.data import integrity
from experiments.data.crops import NotAPackError, TokenChunks, write_crops
from experiments.data.dataset import SampleDataset
from experiments.data.images import UnreadableImage, decode_image
from experiments.data.layouts import Sample
from experiments.data.transforms import ImageTooSmall, Preprocess

#: Bump when the record layout or ``pack.json`` changes.
PACK_FORMAT = 2
META_NAME = "pack.json"
#: LitData's target chunk size: large enough that a chunk read amortises its request on object storage.
CHUNK_BYTES = "64MB"
#: the fewest records per packing process: below it a process costs more to start than it saves.
MIN_PER_WORKER = 256
ENCODED, DECODED = "encoded", "decoded"


def is_remote(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str | Path, *names: str) -> str:
    """``location/names...`` for a folder or a URL."""
    return "/".join([str(location).rstrip("/"), *names]) if is_remote(location) else str(Path(location, *names))


def _upload(local: Path, remote: str) -> None:
    from litdata.streaming.fs_provider import _get_fs_provider

    _get_fs_provider(remote).upload_file(str(local), remote)


def _download(remote: str, local: Path) -> bool:
    from litdata.streaming.fs_provider import _get_fs_provider

    provider = _get_fs_provider(remote)
    if not provider.exists(remote):
        return False
    provider.download_file(remote, str(local))
    return True


@dataclass(frozen=True)
class Bad:
    """An unusable file of a split, as the pack reports it."""

    relpath: str
    reason: str
    index: int = -1  #: its place in the split


@dataclass
class PackInfo:
    """The contents of ``pack.json``."""

    mode: str
    generators: list[str]
    class_names: list[str]
    counts: dict[str, int]
    bad: dict[str, list[Bad]]
    root: str
    preprocess: str | None = None
    #: the crop size of a decoded pack (its TokensLoader blocks hold ``3 * crop * crop`` bytes)
    crop: int | None = None
    format: int = PACK_FORMAT

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d["bad"] = {s: [b.__dict__ for b in bad] for s, bad in self.bad.items()}
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "PackInfo":
        d = json.loads(text)
        d["bad"] = {s: [Bad(**b) for b in bad] for s, bad in d["bad"].items()}
        return cls(**d)

    @property
    def n_bad(self) -> int:
        return sum(len(b) for b in self.bad.values())


def not_a_pack(location: str | Path) -> NotAPackError:
    return NotAPackError(
        f"{location} is not a packed dataset (no {META_NAME}). Write one first with "
        f"`python run.py task=pack data=<layout> data.root=/path/to/dataset pack.out={location}`, "
        f"then read it with data=packed data.root={location}"
    )


def read_info(location: str | Path) -> PackInfo:
    """The ``pack.json`` of the pack at ``location`` (folder or URL); :class:`NotAPackError` when it has none."""
    if is_remote(location):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / META_NAME
            if not _download(join(location, META_NAME), local):
                raise not_a_pack(location)
            return _checked(PackInfo.from_json(local.read_text()), location)
    path = Path(location) / META_NAME
    if not path.is_file():
        raise not_a_pack(location)
    return _checked(PackInfo.from_json(path.read_text()), location)


def _checked(info: PackInfo, location: str | Path) -> PackInfo:
    if info.format != PACK_FORMAT:
        raise NotAPackError(f"{location} is a pack of format {info.format}; this version reads format "
                            f"{PACK_FORMAT}. Write it again with task=pack (a data.cache entry is rebuilt by itself)")
    return info


def read_entries(location: str | Path) -> list[integrity.Entry]:
    """The manifest rows of the pack at ``location`` (each split's samples in index order)."""
    if is_remote(location):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / integrity.MANIFEST_NAME
            if not _download(join(location, integrity.MANIFEST_NAME), local):
                raise not_a_pack(location)
            return integrity.read_manifest(local)
    return integrity.read_manifest(Path(location) / integrity.MANIFEST_NAME)


class _Record:
    """``litdata.optimize``'s function: the record of sample ``index`` of one split (picklable, for its workers)."""

    def __init__(self, samples: Sequence[Sample], entries: Sequence[integrity.Entry], split: str,
                 preprocess: Preprocess | None, status_dir: str) -> None:
        self.samples, self.entries, self.split = list(samples), list(entries), split
        self.preprocess, self.status_dir = preprocess, status_dir

    def __call__(self, index: int) -> dict:
        sample, entry = self.samples[index], self.entries[index]
        try:
            data = Path(sample.path).read_bytes()
        except OSError:
            data = b""
        reason = ""
        try:
            image = decode_image(sample.path, data).image
            crop = self.preprocess(image).numpy() if self.preprocess is not None else None
        except UnreadableImage as err:
            reason, crop = err.reason, None
        except ImageTooSmall as err:
            reason, crop = f"too small: {err}", None
        if reason:
            with open(os.path.join(self.status_dir, f"{os.getpid()}.jsonl"), "a") as f:
                f.write(json.dumps({"index": index, "relpath": entry.relpath, "reason": reason}) + "\n")
        record = {"ok": int(not reason), "index": index, "label": int(sample.label), "generator": sample.generator,
                  "split": self.split, "relpath": entry.relpath, "sha256": entry.sha256}
        if self.preprocess is not None:  # one TokensLoader block: the C-order crop, flat
            c = self.preprocess.crop_size
            return (crop if crop is not None else np.zeros((3, c, c), dtype=np.uint8)).reshape(-1)
        record["data"] = data
        return record


def _bad_of(status_dir: Path) -> list[Bad]:
    rows = [json.loads(line) for f in sorted(status_dir.glob("*.jsonl")) for line in f.read_text().splitlines()]
    return [Bad(r["relpath"], r["reason"], r["index"]) for r in sorted(rows, key=lambda r: r["index"])]


def _start_method() -> str:
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def write_pack(splits: dict[str, Sequence[Sample]], out: str | Path, root: str | Path,
               class_names: Sequence[str], preprocess: Preprocess | None = None,
               workers: int | None = None, chunk_bytes: str | int = CHUNK_BYTES) -> PackInfo:
    """Write ``splits`` as a pack at ``out`` (folder or URL): encoded file bytes, or the ``preprocess`` crops
    (a decoded pack; ``preprocess`` must be deterministic). ``workers`` = the writing processes (None = one
    per core). A local decoded pack is written by :func:`~experiments.data.crops.write_crops` (LitData's
    ``BinaryWriter``, each file read once for its hash and its crop), the others by ``litdata.optimize``. A
    local pack is written into a temporary folder beside ``out`` and renamed when complete, so a reader never
    sees half a pack. Returns what ``pack.json`` holds."""
    workers = integrity.default_workers() if workers is None else max(1, int(workers))
    remote = is_remote(out)
    direct = preprocess is not None and not remote
    entries = [] if direct else integrity.build_manifest(splits, workers)
    if not remote:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{Path(str(out)).name}-", dir=None if remote else Path(out).parent))
    target = out if remote else staging
    bad: dict[str, list[Bad]] = {}
    try:
        start = 0
        for split, samples in splits.items():
            if direct:
                crops = write_crops(samples, staging / split, preprocess, workers, chunk_bytes)
                entries += [integrity.Entry(s.split_name, c.size, c.sha256, int(s.label), s.generator, split)
                            for s, c in zip(samples, crops)]
                bad[split] = [Bad(s.split_name, c.reason, i) for i, (s, c) in enumerate(zip(samples, crops))
                              if c.reason]
                continue
            bad[split] = _optimize(samples, entries[start:start + len(samples)], split, preprocess, staging,
                                   join(target, split), workers, chunk_bytes)
            start += len(samples)
        info = PackInfo(mode=ENCODED if preprocess is None else DECODED,
                        generators=sorted({s.generator for v in splits.values() for s in v}),
                        class_names=list(class_names), counts={s: len(v) for s, v in splits.items()}, bad=bad,
                        root=str(root), preprocess=None if preprocess is None else repr(preprocess),
                        crop=None if preprocess is None else preprocess.crop_size)
        integrity.write_manifest(entries, staging / integrity.MANIFEST_NAME)
        (staging / META_NAME).write_text(info.to_json())
        if remote:  # the metadata last: a pack without pack.json is not read
            _upload(staging / integrity.MANIFEST_NAME, join(out, integrity.MANIFEST_NAME))
            _upload(staging / META_NAME, join(out, META_NAME))
        else:
            try:
                staging.rename(out)
            except OSError:  # another process finished the same pack first
                if not (Path(out) / META_NAME).is_file():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _optimize(samples: Sequence[Sample], entries: Sequence[integrity.Entry], split: str,
              preprocess: Preprocess | None, staging: Path, target: str, workers: int,
              chunk_bytes: str | int) -> list[Bad]:
    """One split written by ``litdata.optimize`` into ``target``; returns its unusable samples."""
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    status = staging / f".status-{split}"
    status.mkdir()
    optimize(_Record(samples, entries, split, preprocess, str(status)), list(range(len(samples))), target,
             num_workers=max(1, min(workers, len(samples) // MIN_PER_WORKER)), chunk_bytes=chunk_bytes,
             reorder_files=False, keep_data_ordered=True, verbose=False, start_method=_start_method(),
             item_loader=None if preprocess is None else TokensLoader())
    bad = _bad_of(status)
    shutil.rmtree(status)
    return bad


def samples_of(entries: Sequence[integrity.Entry], root: str) -> dict[str, list[Sample]]:
    """The splits of a pack's manifest rows, as :class:`Sample` (paths under the original ``root``)."""
    out: dict[str, list[Sample]] = {}
    for e in entries:
        out.setdefault(e.split, []).append(Sample(join(root, e.relpath), e.label, e.generator, e.relpath))
    return out


class DecodeRecord:
    """LitData transform: an encoded record -> ``(index, uint8 image)`` (decoded in the loader worker), or
    ``(index, None)`` when the record is unusable."""

    def __init__(self, preprocess: Preprocess | None) -> None:
        self.preprocess = preprocess

    def __call__(self, record: dict) -> tuple[int, torch.Tensor | None]:
        index = int(record["index"])
        if not record["ok"]:
            return index, None
        try:
            return index, self.preprocess(decode_image(record["relpath"], record["data"]).image)
        except (UnreadableImage, ImageTooSmall):
            return index, None


def _stream_class():
    from litdata import StreamingDataset
    from litdata.streaming.sampler import ChunkedIndex

    class TokenBlocks(StreamingDataset):
        """``litdata.StreamingDataset`` over a decoded pack (``TokensLoader`` blocks): items are ``(index, crop)``,
        or ``(index, None)`` for an unusable sample, so shuffling, rank sharding and resuming stay LitData's. A
        local pack's blocks are views of its memory-mapped chunks (``chunks``), copied once by the collate."""

        def __init__(self, location: str, crop: int, ok: np.ndarray, chunks: "TokenChunks | None", **kwargs) -> None:
            from litdata.streaming.item_loader import TokensLoader

            super().__init__(location, item_loader=TokensLoader(block_size=3 * crop * crop), **kwargs)
            self.crop, self.ok, self.chunks = crop, ok, chunks

        def __getitem__(self, index):
            i = int(index.index if isinstance(index, ChunkedIndex) else index)
            if not self.ok[i]:
                return i, None
            if self.chunks is not None:
                return i, self.chunks.block(i)
            return i, super().__getitem__(index).reshape(3, self.crop, self.crop)

    return TokenBlocks


class CollateRecords:
    """The loader's ``collate_fn`` over ``(index, image or None)`` items: the usable images stacked in one
    copy, the labels and generators gathered from the split's tables by index (:meth:`SampleDataset.batch`),
    the unusable ones counted in ``batch["skipped"]``: the dict :func:`~experiments.data.dataset.collate_skipping`
    makes, without building and collating a dict of tensors per image."""

    def __init__(self, split: SampleDataset) -> None:
        self.split = split

    def __call__(self, items: list[tuple[int, object]]) -> dict:
        good = [(i, im) for i, im in items if im is not None]
        index = torch.tensor([i for i, _ in good], dtype=torch.long)
        images = [im for _, im in good]
        if images and isinstance(images[0], np.ndarray):
            stacked = torch.from_numpy(np.stack(images))
        else:
            stacked = torch.stack(images) if images else torch.empty(0, dtype=torch.uint8)
        return self.split.batch(stacked, index, skipped=len(items) - len(good))


class PackedSplit(SampleDataset):
    """One split of a pack: its samples (from the pack's manifest, in index order) and its LitData chunks.

    :meth:`streaming` makes the ``litdata.StreamingDataset`` the loaders of an encoded or remote pack iterate:
    LitData shuffles, shards by rank and resumes. A local decoded pack (``crop`` given) is a map-style dataset
    that reads whole batches (:meth:`__getitems__`, one gather from :class:`TokenChunks`), what its ordered and
    shuffled loaders use; ``dataset[i]`` reads record ``i`` (random access, for checks and tests). ``bad`` lists the
    split's unusable samples (``pack.json``).
    """

    def __init__(self, samples: Sequence[Sample], location: str, generator_names: Sequence[str],
                 preprocess: Preprocess | None, cache_dir: str | None = None, bad: Sequence[Bad] = (),
                 crop: int | None = None) -> None:
        super().__init__(samples, generator_names)
        self.location, self.preprocess, self.cache_dir, self.crop = location, preprocess, cache_dir, crop
        self.n_bad, self.ok = len(bad), np.ones(len(self.samples), dtype=bool)
        self.ok[[b.index for b in bad if b.index >= 0]] = False
        self.chunks = TokenChunks(location, crop) if crop is not None and not is_remote(location) else None
        self._reader, self._tables = None, None

    @property
    def batched(self) -> bool:  # whether __getitems__ reads whole batches (a local decoded pack)
        return self.chunks is not None

    def streaming(self, shuffle: bool = False, drop_last: bool | None = None, seed: int = 0):
        kwargs = dict(cache_dir=self.cache_dir, shuffle=shuffle, drop_last=drop_last, seed=seed)
        if self.crop is not None:
            return _stream_class()(self.location, self.crop, self.ok, self.chunks, **kwargs)
        from litdata import StreamingDataset

        return StreamingDataset(self.location, transform=DecodeRecord(self.preprocess), **kwargs)

    def collate(self) -> CollateRecords:
        """The ``collate_fn`` of a loader of :meth:`streaming`."""
        return CollateRecords(self)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None, "_tables": None}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """The collated batch of ``indices`` (a local decoded pack): the usable crops gathered in one read, in
        the sampler's order, the unusable ones counted as skipped."""
        index = np.asarray(indices, dtype=np.int64)
        valid = index[self.ok[index]]
        if not len(valid):
            return self.batch(torch.empty(0, dtype=torch.uint8), torch.from_numpy(valid), skipped=len(index))
        if self._tables is None:  # numpy views of the label and generator tables: cheaper to index than tensors
            self._tables = (self.label_values.numpy(), self.generator_ids.numpy())
        labels, generators = self._tables
        return {"image": torch.from_numpy(self.chunks.gather(valid)), "label": torch.from_numpy(labels[valid]),
                "generator": torch.from_numpy(generators[valid]), "index": torch.from_numpy(valid),
                "skipped": torch.tensor(len(index) - len(valid))}

    def __getitem__(self, index: int) -> dict | None:
        if self.chunks is not None:
            if not self.ok[index]:
                return None
            return self.item(torch.from_numpy(self.chunks.gather(np.array([int(index)]))[0]), int(index))
        if self._reader is None:
            self._reader = self.streaming()
        i, image = self._reader[int(index)]
        return None if image is None else self.item(torch.as_tensor(np.array(image)), i)
