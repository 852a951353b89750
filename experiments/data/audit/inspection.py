"""What the data check learns about each file, read once: a :class:`FileRecord` (SHA-256 of the bytes, the
format from the content, size, the estimated JPEG quality, the JPEG quantisation-table fingerprint and chroma
subsampling, EXIF presence and its Software tag, the bit depth, or why the file cannot be decoded), and the scan of
many files in a process pool, one worker per core, each sent chunks of files (decoding holds the GIL for part of
the work, so threads do not scale). :func:`content_hash` is the suite's one hash of a file's bytes: the duplicate
check, the per-file store (:mod:`~experiments.data.audit.store`) and the predictions files use it.

The JPEG quality is the IJG quality whose scaled standard tables (JPEG Annex K, ITU-T T.81, 1992) are closest
to the file's quantization tables.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from experiments.data.images import UnreadableImage, decode_image
from experiments.data.layouts import Sample
from experiments.process import progress_bar

log = logging.getLogger(__name__)

# IJG / JPEG Annex K base tables, natural (row-major) order, as PIL's ``img.quantization`` gives them.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])  # fmt: skip
_IJG_CHROMA = np.array([17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5
                       + [47, 66] + [99] * 6 + [99] * 32)



# -- JPEG quality ---------------------------------------------------------------------------------------------
def _ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255)


_IJG_CANDIDATES = {
    idx: np.stack([_ijg_table(base, q) for q in range(1, 101)]) for idx, base in ((0, _IJG_LUMA), (1, _IJG_CHROMA))
}


def estimate_jpeg_quality(quantization: Mapping[int, Sequence[int]] | None) -> int | None:
    """The IJG quality (1-100) whose scaled standard tables are closest to the file's tables.

    The IJG encoder (libjpeg, PIL, most cameras' "quality") scales the Annex K tables
    by ``5000/q`` (q < 50) or ``200 - 2q``; inverting that is exact for IJG files and
    the nearest equivalent for others (Photoshop and camera-specific tables).
    Returns None for non-JPEG input (no tables).
    """
    if not quantization or 0 not in quantization or len(quantization[0]) != 64:
        return None
    error = np.zeros(100)
    for idx in (0, 1):
        if idx in quantization and len(quantization[idx]) == 64:
            table = np.asarray(quantization[idx], dtype=np.float64)
            error += np.abs(_IJG_CANDIDATES[idx] - table).sum(axis=1)
    return int(np.argmin(error)) + 1


def quant_table_fingerprint(quantization: Mapping[int, Sequence[int]] | None) -> str | None:
    """A short hash (8 hex digits of SHA-256) of a JPEG's quantisation tables, luma and chroma in table order:
    equal for files written with the same tables (one encoder at one quality), different across qualities and
    across encoders with their own tables (cameras, Photoshop), which the IJG quality estimate folds together
    (Kee, Johnson and Farid 2011, "Digital image authentication from JPEG headers"). None when not JPEG."""
    if not quantization:
        return None
    text = ";".join(",".join(str(int(v)) for v in quantization[k]) for k in sorted(quantization))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


#: bits per sample of the PIL modes that are not 8-bit
_MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def bit_depth(fmt: str | None, mode: str, data: bytes = b"", jpeg_bits: int | None = None) -> int:
    """Bits per sample: a PNG's from its IHDR header (``data``: the file's bytes; PIL reads a 48-bit RGB PNG as
    8-bit RGB), a JPEG's sample precision, else from the PIL ``mode`` (8 for the 8-bit modes)."""
    if fmt == "PNG" and len(data) > 24 and data[12:16] == b"IHDR":
        return int(data[24])
    if fmt == "JPEG" and jpeg_bits:
        return int(jpeg_bits)
    return _MODE_BITS.get(mode, 8)


@dataclass(slots=True)
class FileRecord:
    """What the scan learned about one file. ``reason`` is set when the file cannot be decoded. Not frozen: a
    frozen dataclass sets each field through ``object.__setattr__``, five times the cost of building one, and a
    check of a stored dataset builds one per file (use :func:`dataclasses.replace` for a changed copy)."""

    path: str
    split: str
    generator: str
    label: int
    sha256: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    jpeg_quality: int | None = None
    reason: str | None = None
    detail: str = ""
    #: size of the file in bytes (of the equalizer's re-encoded output for an equalized record)
    n_bytes: int = 0
    #: 1 when the file carries EXIF data, else 0
    exif: int = 0
    #: the EXIF Software tag (None without one)
    software: str | None = None
    #: :func:`quant_table_fingerprint` of a JPEG's tables (None when not JPEG)
    quant_table: str | None = None
    #: JPEG chroma subsampling: ``4:4:4``, ``4:2:2``, ``4:2:0`` or ``other`` (None when not JPEG)
    subsampling: str | None = None
    #: bits per sample (8, or 16 for a 16-bit PNG; :func:`bit_depth`); 0 when unreadable
    bit_depth: int = 0

    @property
    def readable(self) -> bool:
        return self.reason is None

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


#: the algorithm of the suite's one hash of a file's bytes (SHA-256, FIPS 180-4, through :mod:`hashlib`)
CONTENT_HASH = "sha256"


def content_hash(data: bytes) -> str:
    """The hash of a file's bytes the suite uses everywhere (:data:`CONTENT_HASH`, hex): duplicates, the per-file
    store, the ``hash`` column of the predictions files and the dataset manifests."""
    return hashlib.new(CONTENT_HASH, data).hexdigest()


def file_content_hash(path: str | Path) -> str | None:
    """:func:`content_hash` of the file at ``path``, or None when it cannot be read."""
    try:
        return content_hash(Path(path).read_bytes())
    except OSError:
        return None


def inspect_file(sample: Sample, split: str) -> FileRecord:
    """Read ``sample.path`` once, hash the bytes and decode them fully; never raises for a bad file."""
    return FileRecord(sample.path, split, sample.generator, sample.label, *inspect_path(sample.path))


#: the fields of a :class:`FileRecord` that come from the file (not from the sample): what the store keeps
CONTENT_FIELDS = ("sha256", "format", "mode", "width", "height", "jpeg_quality", "reason", "detail", "n_bytes",
                  "exif", "software", "quant_table", "subsampling", "bit_depth")
#: the fields after ``n_bytes`` of a file that cannot be read or decoded
_NO_HEADER = (0, None, None, None, 0)


def inspect_path(path: str) -> tuple:
    """The :data:`CONTENT_FIELDS` of the file at ``path``, as a tuple (cheap to send between processes)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return (None, None, None, 0, 0, None, "cannot read file", str(err), 0, *_NO_HEADER)
    digest = content_hash(data)
    try:
        decoded = decode_image(path, data)
    except UnreadableImage as err:
        return (digest, None, None, 0, 0, None, err.reason, err.detail, 0, *_NO_HEADER)
    width, height = decoded.image.size
    header = decoded.header
    return (digest, decoded.format, decoded.mode, width, height, estimate_jpeg_quality(decoded.quantization), None,
            "", len(data), int(header.get("exif", 0)), header.get("software"),
            quant_table_fingerprint(decoded.quantization), header.get("subsampling"),
            bit_depth(decoded.format, decoded.mode, data, header.get("bits")))


def _inspect_chunk(paths: list[str]) -> list[tuple]:
    return [inspect_path(p) for p in paths]


#: below this many files the scan runs in the calling process (a pool costs more than it saves)
POOL_MIN_FILES = 256


def default_workers() -> int:
    """One inspection process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def inspect_paths(paths: Sequence[str], workers: int | None = None, progress: bool = False) -> list[tuple]:
    """:func:`inspect_path` of every path, in order: in a ``ProcessPoolExecutor`` of ``workers`` processes
    (None = one per core) fed chunks of files, so the per-task overhead is paid per chunk, not per file."""
    workers = workers or default_workers()
    with progress_bar(len(paths), "check data", unit="img", enabled=progress) as bar:
        if workers <= 1 or len(paths) < POOL_MIN_FILES:
            out = []
            for p in paths:
                out.append(inspect_path(p))
                bar.update()
            return out
        size = max(16, min(512, len(paths) // (workers * 8) or 1))
        chunks = [list(paths[i:i + size]) for i in range(0, len(paths), size)]
        out = []
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(_inspect_chunk, chunks):
                out += part
                bar.update(len(part))
        return out


def inspect_all(jobs: Sequence[tuple[Sample, str]], workers: int | None = None,
                progress: bool = False) -> list[FileRecord]:
    """One :class:`FileRecord` per ``(sample, split)`` job, inspected by :func:`inspect_paths`."""
    return records_from(jobs, inspect_paths([s.path for s, _ in jobs], workers, progress))


def records_from(jobs: Iterable[tuple[Sample, str]], fields: Iterable[tuple]) -> list[FileRecord]:
    """:class:`FileRecord` objects of ``jobs`` from their :data:`CONTENT_FIELDS` tuples."""
    return [FileRecord(s.path, split, s.generator, s.label, *f) for (s, split), f in zip(jobs, fields)]
