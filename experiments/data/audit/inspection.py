"""What the data check learns about each file, read once: a :class:`FileRecord` (SHA-1 of the bytes, the
format from the content, size, the estimated JPEG quality, or why the file cannot be decoded), and the threaded
scan of many files with its per-file cache, so the jobs of a sweep decode a dataset once.

The JPEG quality is the IJG quality whose scaled standard tables (JPEG Annex K, ITU-T T.81, 1992) are closest
to the file's quantization tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from experiments.data.cache import file_list_key
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


@dataclass(frozen=True)
class FileRecord:
    """What the scan learned about one file. ``reason`` is set when the file cannot be decoded."""

    path: str
    split: str
    generator: str
    label: int
    sha1: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    jpeg_quality: int | None = None
    reason: str | None = None
    detail: str = ""
    #: size of the file in bytes (of the equalizer's re-encoded output for an equalized record)
    n_bytes: int = 0

    @property
    def readable(self) -> bool:
        return self.reason is None

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


def inspect_file(sample: Sample, split: str) -> FileRecord:
    """Read ``sample.path`` once, hash the bytes and decode them fully; never raises for a bad file."""
    base = dict(path=sample.path, split=split, generator=sample.generator, label=sample.label)
    try:
        data = Path(sample.path).read_bytes()
    except OSError as err:
        return FileRecord(**base, reason="cannot read file", detail=str(err))
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        decoded = decode_image(sample.path, data)
    except UnreadableImage as err:
        return FileRecord(**base, sha1=sha1, reason=err.reason, detail=err.detail)
    width, height = decoded.image.size
    return FileRecord(
        **base,
        sha1=sha1,
        n_bytes=len(data),
        format=decoded.format,
        mode=decoded.mode,
        width=width,
        height=height,
        jpeg_quality=estimate_jpeg_quality(decoded.quantization),
    )


def inspect_all(jobs: list[tuple[Sample, str]], num_threads: int | None, progress: bool) -> list[FileRecord]:
    threads = num_threads or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, progress_bar(
        len(jobs), "check data", unit="img", enabled=progress
    ) as bar:
        records = []
        for record in pool.map(lambda job: inspect_file(*job), jobs, chunksize=1):
            records.append(record)
            bar.update()
    return records


def scan_cache_path(jobs: Sequence[tuple[Sample, str]], cache_dir: str | Path | None) -> Path | None:
    """Where the per-file results of ``jobs`` (``(sample, split)`` pairs) are cached, or None without a cache."""
    if cache_dir is None:
        return None
    key = file_list_key("data check v2", (s for s, _ in jobs), (split for _, split in jobs))
    return Path(cache_dir) / f"{key}.json"


def read_cached_scan(path: Path) -> list[FileRecord] | None:
    """The cached records at ``path``, or None when there are none (or they cannot be read)."""
    try:
        return [FileRecord(**r) for r in json.loads(path.read_text())["records"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached_scan(path: Path, records: list[FileRecord]) -> None:
    """Write atomically (temporary file, then rename), so a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"records": [asdict(r) for r in records]}))
        tmp.replace(path)
    except OSError as err:  # a read-only cache folder only costs the next job a re-scan
        log.warning("data check: cannot write the cache %s (%s); the next run scans again", path, err)
