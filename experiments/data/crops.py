"""The crops of a local decoded pack: written with LitData's ``BinaryWriter`` (:func:`write_crops`), read a
batch at a time from the memory-mapped chunks (:class:`TokenChunks`).

A decoded pack's split is one flat uint8 stream in LitData's ``TokensLoader`` format
(:mod:`experiments.data.shards`). :func:`write_crops` writes it with LitData's ``BinaryWriter`` (the writer
``litdata.optimize`` runs in its workers) without ``optimize``'s orchestration: its worker processes, upload
thread and index merge cost a fixed second or so per split, more than decoding a small split costs
(``docs/scaling.md`` has the figures). Each file is read once, hashed (its manifest row) and decoded and
preprocessed from the same bytes, by a ``fork`` process pool when the split is large enough to repay one,
else by threads when its first block shows decodes long enough to overlap (PIL releases the GIL while it
decodes: a 224 px split decodes 1.2 - 1.4x faster in two threads on two cores, a 64 px one slower), else in this
thread; the writer, in this process, takes the crops in index order, a
block of them per item (``TokensLoader``'s ``block_size`` cuts the stream into crops, so LitData's own
``StreamingDataset`` reads the chunks, as a test checks). Object-store packs still go through ``optimize``,
which uploads.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import json
import multiprocessing
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from experiments.data.audit.inspection import CONTENT_HASH
from experiments.data.images import UnreadableImage, decode_image
from experiments.data.layouts import DatasetLayoutError, Sample
from experiments.data.transforms import ImageTooSmall, Preprocess

#: the fewest images per decoding process: below it (about 0.3 s of decoding at 64 px) starting the pool, and
#: sending the crops back through its pipes, cost about what the second process saves
MIN_PER_PROCESS = 1024
#: the time per image of a split's first block (read, hash, decode, preprocess) from which the rest decodes in
#: threads: PIL releases the GIL while it decodes, so long decodes overlap (a 224 px demo split, 2.3 - 2.9 ms an
#: image, 1.2 - 1.4x faster in two threads on 2 cores), short ones do not (64 px, 0.4 ms: 1,890 - 1,950
#: images/s in two threads against 2,050 - 2,200 in one)
THREADS_MIN_SECONDS = 1e-3
#: images per task of the decoding pool
BLOCK = 32


class NotAPackError(DatasetLayoutError):
    """The folder or URL given as a pack holds no ``pack.json``, or chunks that are not a decoded pack's."""


@dataclass(frozen=True)
class Crop:
    """One sample read for a decoded pack: the file's size and content hash (``-1, ""`` when it cannot be
    read), the reason it is unusable (``""`` when usable) and its crop, C-order and flat."""

    size: int
    sha256: str
    reason: str
    crop: np.ndarray


_PREPROCESS: Preprocess | None = None


def _set_preprocess(preprocess: Preprocess) -> None:
    global _PREPROCESS
    _PREPROCESS = preprocess


def read_crop(path: str, preprocess: Preprocess, out: np.ndarray) -> Crop:
    """Read ``path`` once: its size and hash, and its decoded, preprocessed crop, written into ``out`` (a
    ``(3, crop, crop)`` uint8 array; zeros when unusable). The returned :class:`Crop` holds ``out``."""
    try:
        data = Path(path).read_bytes()
        size, sha = len(data), hashlib.new(CONTENT_HASH, data).hexdigest()
    except OSError:
        data, size, sha = b"", -1, ""
    try:
        out[...] = preprocess(decode_image(path, data).image).numpy()  # the one copy of the crop
        return Crop(size, sha, "", out)
    except UnreadableImage as err:
        reason = err.reason
    except ImageTooSmall as err:
        reason = f"too small: {err}"
    out[...] = 0
    return Crop(size, sha, reason, out)


def _read_block(paths: Sequence[str]) -> tuple[np.ndarray, list[Crop]]:
    """The crops of ``paths`` as one flat array (one writer item), and each one's size, hash and reason."""
    c = _PREPROCESS.crop_size
    block = np.empty((len(paths), 3, c, c), dtype=np.uint8)
    crops = [read_crop(p, _PREPROCESS, out) for p, out in zip(paths, block)]
    return block.reshape(-1), [Crop(k.size, k.sha256, k.reason, _EMPTY) for k in crops]


_EMPTY = np.empty(0, dtype=np.uint8)


def write_crops(samples: Sequence[Sample], folder: str | Path, preprocess: Preprocess, workers: int = 1,
                chunk_bytes: str | int = "64MB") -> list[Crop]:
    """Write the crops of ``samples`` (in order) into ``folder`` as LitData ``TokensLoader`` chunks plus
    ``index.json``; ``workers`` decoding processes at most (one per :data:`MIN_PER_PROCESS` images). Each
    writer item is a block of :data:`BLOCK` crops, one token stream as ``TokensLoader`` reads it (its
    ``block_size`` cuts it into crops), so the writer's per-item cost is paid once per block. Returns each
    sample's :class:`Crop` without its pixels (sizes, hashes and reasons, for the manifest)."""
    from litdata.streaming.item_loader import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    paths = [s.path for s in samples]
    from litdata.utilities.env import _DistributedEnv

    writer = BinaryWriter(str(folder), chunk_bytes=chunk_bytes, item_loader=TokensLoader())
    # This process writes the whole pack alone (under DDP, the local rank 0 of its node): the writer must not
    # take the training job's ranks for co-writers, or it waits for index files no other rank writes.
    writer._distributed_env, writer._rank = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1), 0
    c = preprocess.crop_size
    per_item = max(1, min(BLOCK, _bytes(chunk_bytes) // (6 * c * c)))  # at most half a chunk per item
    blocks = [paths[i:i + per_item] for i in range(0, len(paths), per_item)]
    processes = max(1, min(int(workers), len(paths) // MIN_PER_PROCESS))
    out: list[Crop] = []
    pool = None
    if processes == 1 or "fork" not in multiprocessing.get_all_start_methods():
        _set_preprocess(preprocess)
        results = _read_here(blocks, int(workers))
    else:  # fork: the children inherit the preprocessing and the imported suite; only paths are pickled
        gc.freeze()  # the children's collector leaves the parent's objects alone: no copy-on-write of its heap
        try:
            pool = multiprocessing.get_context("fork").Pool(processes, initializer=_set_preprocess,
                                                             initargs=(preprocess,))
        finally:
            gc.unfreeze()
        results = pool.imap(_read_block, blocks)
    try:
        for item, crops in results:
            writer.add_item(len(out) // per_item, item)
            out += crops
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        else:
            results.close()  # its decoding threads stop, should the writer have failed
    writer.done()
    # the one writer's index is on disk: merge it now (``merge`` polls for other writers' indexes and then
    # sleeps 10 ms, as long as packing a small split takes)
    writer._merge_no_wait()
    return out


def _read_here(blocks: Sequence[Sequence[str]], workers: int) -> Iterator[tuple[np.ndarray, list[Crop]]]:
    """:func:`_read_block` of each block, in order, in this process: the first alone, timed; the rest in
    ``workers`` threads when the first took :data:`THREADS_MIN_SECONDS` an image or more, else alone too."""
    if not blocks:
        return
    start = time.perf_counter()
    first = _read_block(blocks[0])
    slow = (time.perf_counter() - start) / len(blocks[0]) >= THREADS_MIN_SECONDS
    yield first
    if workers < 2 or len(blocks) < 2 or not slow:
        yield from map(_read_block, blocks[1:])
        return
    threads = ThreadPoolExecutor(workers, thread_name_prefix="pack-decode")
    try:
        yield from _in_order(threads, _read_block, blocks[1:], ahead=2 * workers)
    finally:
        threads.shutdown(cancel_futures=True)


def _in_order(executor: ThreadPoolExecutor, fn, items: Sequence, ahead: int) -> Iterator:
    """``fn`` of each item, in order, at most ``ahead`` items decoded before the writer takes them (unlike
    ``Executor.map``, which submits every item at once and could hold a whole split's crops in memory)."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _bytes(size: str | int) -> int:
    from litdata.utilities.format import _convert_bytes_to_int

    return _convert_bytes_to_int(size) if isinstance(size, str) else int(size)


class TokenChunks:
    """The chunks of a local decoded pack's split, memory-mapped (lazily, once per process) as ``(n, 3, crop,
    crop)`` uint8 arrays. LitData's ``TokensLoader`` format: ``index.json`` lists each chunk with its item count
    (``chunk_size``) and token count (``dim``); a chunk is ``chunk_size + 2`` uint32 of header, then the tokens,
    as ``TokensLoader`` maps it, ``dim // (3 * crop * crop)`` crops. :meth:`gather` reads a batch with one fancy-index per chunk it touches."""

    def __init__(self, folder: str | Path, crop: int) -> None:
        from litdata.constants import _NUMPY_DTYPES_MAPPING

        self.folder, self.crop = Path(folder), int(crop)
        index = json.loads((self.folder / "index.json").read_text())
        config = index["config"]
        name, _, dtype = (config.get("data_format") or [""])[0].partition(":")
        if (config.get("item_loader") != "TokensLoader" or name != "no_header_numpy" or config.get("compression")
                or _NUMPY_DTYPES_MAPPING.get(int(dtype or -1)) != np.dtype(np.uint8)):
            raise NotAPackError(f"{self.folder} does not hold uncompressed uint8 TokensLoader chunks (a decoded "
                                f"pack); pack the dataset again")
        block = 3 * self.crop ** 2  # a chunk: (items + 2) uint32 of header, then dim tokens, dim // block crops
        self.chunks = [(c["filename"], int(c["chunk_size"]), int(c["dim"]) // block) for c in index["chunks"]]
        self.bounds = np.cumsum([0] + [n for _, _, n in self.chunks]).tolist()
        for name, items, n in self.chunks:  # a missing or truncated chunk: a clear error, not a failed memory map
            path = self.folder / name
            if not path.is_file() or path.stat().st_size < (items + 2) * 4 + n * block:
                raise NotAPackError(f"{path} is missing or holds fewer than {n} crops; pack the dataset again")
        self._maps: list[np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def maps(self) -> list[np.ndarray]:
        if self._maps is None:
            shape = (3, self.crop, self.crop)  # ndarray views: numpy's memmap subclass slows every index
            self._maps = [np.asarray(np.memmap(self.folder / name, dtype=np.uint8, mode="r",
                                               offset=(items + 2) * 4, shape=(n, *shape)))
                          for name, items, n in self.chunks]
        return self._maps

    def block(self, i: int) -> np.ndarray:  # a read-only view of crop i
        k = bisect.bisect_right(self.bounds, i) - 1
        return self.maps()[k][i - self.bounds[k]]

    def gather(self, index: np.ndarray) -> np.ndarray:
        """The crops of ``index`` (int64, any order), copied once into one array in that order. A batch within
        one chunk is one fancy-index; a batch across chunks is sorted, so each chunk it touches is read once,
        in ascending order, and written back to the requested places."""
        maps = self.maps()
        if len(maps) == 1 or not len(index):
            return maps[0][index]
        first = bisect.bisect_right(self.bounds, int(index.min())) - 1
        if index.max() < self.bounds[first + 1]:  # one chunk: an ordered loader's case except at chunk boundaries
            return maps[first][index - self.bounds[first]] if first else maps[0][index]
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        chunk = np.searchsorted(self.bounds, ordered, side="right") - 1
        cuts = np.flatnonzero(np.diff(chunk)) + 1
        out = np.empty((len(index), 3, self.crop, self.crop), dtype=np.uint8)
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(index)]):
            k = int(chunk[lo])
            out[order[lo:hi]] = maps[k][ordered[lo:hi] - self.bounds[k]]
        return out
