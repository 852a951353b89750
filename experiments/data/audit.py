"""The data audit: scan a dataset before training and report what would hurt it.

One pass over every file of the suite's train / val / test splits (each file is
read once, hashed and fully decoded once, since truncation only shows on a full
decode) gives a :class:`DataReport`:

* image counts per split, generator and class;
* format (from the content, not the extension), size and JPEG-quality histograms;
* unreadable files with their reason, and images smaller than the crop;
* identical files (SHA-1 of the bytes) shared by two splits.

From the report, :func:`check_bad_fraction` stops a run whose data is too broken
and :func:`leakage_warnings` flags incidental real-vs-synthetic differences (file
format, JPEG quality, image size) that a detector can learn instead of generator
traces. :func:`add_metadata_probe` measures the same leak as one number: the
cross-validated AUROC of a logistic regression that sees only the metadata (format,
width, height, JPEG quality, bytes per pixel), on the files as they are and again on
what the configured equalizer makes of them; with an equalizer the warnings judge
the equalized images, since those are what a detector sees. :func:`preflight` runs all of it before training;
:func:`experiments.tasks.check_data.check_data` is the stand-alone task::

    python run.py task=check_data data=genimage_tiny data.root=/path/to/genimage_tiny
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from experiments.errors import UserError
from experiments.data.cache import file_list_key
from experiments.data.images import UnreadableImage, decode_image, load_rgb
from experiments.data.layouts import CLASS_NAMES, Sample

log = logging.getLogger(__name__)

DEFAULT_MAX_BAD_FRACTION = 0.01
#: total-variation distance between the real and synthetic histograms above which a leakage warning is given.
LEAKAGE_TV_THRESHOLD = 0.5
#: the setting that removes format, quality and size differences (features.equalizer.ExtremeEqualizer).
EQUALIZER_HINT = (
    "equalizer=extreme (ExtremeEqualizer: re-encodes every image, real and synthetic, to one JPEG quality and one size)"
)
#: lower edges of the short-side bins, in pixels (half-octave steps); the last bin is open-ended.
SHORT_SIDE_EDGES = (0, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
#: width of the JPEG-quality bins used for the leakage test (1-5, 6-10, ..., 96-100).
QUALITY_BIN_WIDTH = 5
#: how many files each list in the text report shows (the JSON report has all of them).
LIST_LIMIT = 20
#: folds of the stratified cross-validation of the metadata probe.
PROBE_FOLDS = 5
#: at most this many files per class are equalized for the probe and the warnings after the equalizer (seeded).
PROBE_MAX_PER_CLASS = 2000

# IJG / JPEG Annex K base tables, natural (row-major) order, as PIL's ``img.quantization`` gives them.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])  # fmt: skip
_IJG_CHROMA = np.array([17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5
                       + [47, 66] + [99] * 6 + [99] * 32)


class BadDataError(ValueError, UserError):
    """Too many files cannot be used, or a split/class has no usable image at all."""


class DataLeakageWarning(UserWarning):
    """Real and synthetic images differ in an incidental property (format, JPEG quality, size)."""


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


# -- per-file records ---------------------------------------------------------------------------------------
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


# -- histograms ---------------------------------------------------------------------------------------------
def short_side_bin(side: int) -> str:
    """Label of the half-octave bin of ``SHORT_SIDE_EDGES`` holding ``side``, e.g. ``"256-383"``."""
    idx = int(np.searchsorted(SHORT_SIDE_EDGES, side, side="right")) - 1
    if idx == len(SHORT_SIDE_EDGES) - 1:
        return f">={SHORT_SIDE_EDGES[-1]}"
    return f"{SHORT_SIDE_EDGES[idx]}-{SHORT_SIDE_EDGES[idx + 1] - 1}"


def quality_bin(quality: int) -> str:
    lo = (quality - 1) // QUALITY_BIN_WIDTH * QUALITY_BIN_WIDTH + 1
    return f"{lo}-{lo + QUALITY_BIN_WIDTH - 1}"


def _sort_key(key: Any) -> tuple:
    return (0, key) if isinstance(key, (int, float)) else (1, str(key))


@dataclass
class Histograms:
    """Histograms over a set of readable images."""

    formats: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    short_side: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    jpeg_quality: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, records: Iterable[FileRecord]) -> "Histograms":
        hist = cls()
        for r in records:
            if not r.readable:
                continue
            hist.formats[r.format or "unknown"] += 1
            hist.modes[r.mode or "unknown"] += 1
            hist.short_side[short_side_bin(r.short_side)] += 1
            hist.sizes[f"{r.width}x{r.height}"] += 1
            if r.jpeg_quality is not None:
                hist.jpeg_quality[r.jpeg_quality] += 1
        return hist

    def to_dict(self, top_sizes: int = 10) -> dict[str, dict[str, int]]:
        def plain(counter: Counter) -> dict[str, int]:
            return {str(k): int(v) for k, v in sorted(counter.items(), key=lambda kv: _sort_key(kv[0]))}

        return {
            "formats": plain(self.formats),
            "modes": plain(self.modes),
            "short_side": {k: int(v) for k, v in sorted(self.short_side.items(), key=lambda kv: _bin_start(kv[0]))},
            "top_sizes": {k: int(v) for k, v in self.sizes.most_common(top_sizes)},
            "jpeg_quality": plain(self.jpeg_quality),
        }


def _bin_start(label: str) -> int:
    return int(label.lstrip(">=").split("-")[0])


def shares(counter: Counter, top: int = 3) -> str:
    """``"JPEG 60%, PNG 40%"``: the ``top`` most common entries as percentages."""
    total = sum(counter.values())
    if not total:
        return "-"
    items = counter.most_common(top)
    text = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in items)
    return text + (", ..." if len(counter) > top else "")


def total_variation(a: Counter, b: Counter) -> float:
    """Total-variation distance between two histograms: half the L1 distance of their normalised counts, in [0, 1]."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 0.0
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


# -- duplicates ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DuplicateGroup:
    """Readable files with identical bytes; ``files`` are ``(split, label, path)``."""

    sha1: str
    files: tuple[tuple[str, int, str], ...]

    @property
    def splits(self) -> set[str]:
        return {s for s, _, _ in self.files}

    @property
    def labels_differ(self) -> bool:
        return len({lab for _, lab, _ in self.files}) > 1

    def cross_split_pairs(self) -> list[tuple[tuple[str, int, str], tuple[str, int, str]]]:
        return [(a, b) for a, b in combinations(self.files, 2) if a[0] != b[0]]


def find_duplicates(records: Iterable[FileRecord]) -> list[DuplicateGroup]:
    by_hash: dict[str, list[FileRecord]] = defaultdict(list)
    for r in records:
        if r.readable and r.sha1:
            by_hash[r.sha1].append(r)
    return [
        DuplicateGroup(sha1, tuple((r.split, r.label, r.path) for r in group))
        for sha1, group in sorted(by_hash.items())
        if len(group) > 1
    ]


# -- the report ---------------------------------------------------------------------------------------------
@dataclass
class DataReport:
    """Everything :func:`scan_dataset` found; ``records`` holds one :class:`FileRecord` per file, in split order.

    ``min_size``: images with a shorter side below it are "too small" (0 = no check).
    """

    records: list[FileRecord]
    min_size: int = 0
    root: str | None = None
    seconds: float = 0.0
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    #: the usable files as the configured equalizer outputs them (:func:`add_metadata_probe`); None without one
    equalized: list[FileRecord] | None = None
    #: ``{"raw": AUROC, "equalized": AUROC}`` of the metadata probe (:func:`metadata_probe_auroc`)
    probe: dict[str, float] = field(default_factory=dict)
    equalizer: str = ""

    def leakage_view(self) -> "DataReport":
        """The report the leakage warnings judge: the equalized files when an equalizer is configured."""
        if self.equalized is None:
            return self
        return DataReport(self.equalized, 0, self.root)

    # counts
    @property
    def n_images(self) -> int:
        return len(self.records)

    @property
    def unreadable(self) -> list[FileRecord]:
        return [r for r in self.records if not r.readable]

    @property
    def too_small(self) -> list[FileRecord]:
        return [r for r in self.records if r.readable and r.short_side < self.min_size]

    def usable(self, record: FileRecord) -> bool:
        return record.readable and record.short_side >= self.min_size

    @property
    def bad_files(self) -> list[FileRecord]:
        """Files a loader would drop: unreadable, or smaller than ``min_size``."""
        return [r for r in self.records if not self.usable(r)]

    @property
    def bad_fraction(self) -> float:
        return len(self.bad_files) / self.n_images if self.records else 0.0

    @property
    def cross_split_duplicate_pairs(self) -> int:
        return sum(len(g.cross_split_pairs()) for g in self.duplicates)

    @property
    def within_split_duplicates(self) -> int:
        """Files that repeat another file of the same split (each extra copy counts once)."""
        return sum(n - 1 for g in self.duplicates for n in Counter(s for s, _, _ in g.files).values())

    def groups(self) -> dict[tuple[str, str, int], list[FileRecord]]:
        """Records per ``(split, generator, label)``, in a stable order."""
        out: dict[tuple[str, str, int], list[FileRecord]] = defaultdict(list)
        for r in self.records:
            out[(r.split, r.generator, r.label)].append(r)
        order = {s: i for i, s in enumerate(dict.fromkeys(r.split for r in self.records))}
        return dict(sorted(out.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], kv[0][2])))

    def group_counts(self, records: list[FileRecord]) -> dict[str, int]:
        return {
            "images": len(records),
            "usable": sum(self.usable(r) for r in records),
            "unreadable": sum(not r.readable for r in records),
            "too_small": sum(r.readable and r.short_side < self.min_size for r in records),
        }

    def histograms(
        self, split: str | None = None, generator: str | None = None, label: int | None = None
    ) -> Histograms:
        """Histograms over the usable images matching the given split / generator / label (None = any)."""
        return Histograms.of(
            r for r in self.records
            if self.usable(r)
            and (split is None or r.split == split)
            and (generator is None or r.generator == generator)
            and (label is None or r.label == label)
        )

    def empty_classes(self) -> list[str]:
        """Problems of splits in which a class, or a generator's class, has no usable image."""
        problems, flagged = [], set()
        for split in dict.fromkeys(r.split for r in self.records):
            for label, name in enumerate(CLASS_NAMES):
                recs = [r for r in self.records if r.split == split and r.label == label]
                if not any(self.usable(r) for r in recs):
                    flagged.add((split, label))
                    problems.append(f"the {split} split has no usable {name} image ({_unusable(recs)})")
        for (split, gen, label), recs in self.groups().items():
            if (split, label) not in flagged and not any(self.usable(r) for r in recs):
                problems.append(
                    f"the {split} split has no usable {CLASS_NAMES[label]} image of generator '{gen}' "
                    f"({_unusable(recs)})"
                )
        return problems

    # output
    def summary_metrics(self) -> dict[str, float]:
        """The counts logged to MLflow by :func:`preflight`."""
        return {
            "data/images": float(self.n_images),
            "data/unreadable": float(len(self.unreadable)),
            "data/too_small": float(len(self.too_small)),
            "data/bad_fraction": float(self.bad_fraction),
            "data/duplicates_across_splits": float(self.cross_split_duplicate_pairs),
            "data/scan_seconds": float(self.seconds),
            **{f"data/probe_auroc_{state}": float(value) for state, value in self.probe.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: totals, per-group counts and histograms, every bad file, every duplicate group, warnings."""
        return {
            "root": self.root,
            "min_size": self.min_size,
            "seconds": round(self.seconds, 3),
            "images": self.n_images,
            "unreadable_count": len(self.unreadable),
            "too_small_count": len(self.too_small),
            "bad_fraction": self.bad_fraction,
            "unreadable_reasons": dict(Counter(r.reason for r in self.unreadable)),
            "groups": [
                {"split": split, "generator": gen, "class": CLASS_NAMES[label], "label": label,
                 **self.group_counts(recs), **Histograms.of(r for r in recs if self.usable(r)).to_dict()}
                for (split, gen, label), recs in self.groups().items()
            ],
            "unreadable": [
                {"path": r.path, "split": r.split, "generator": r.generator, "label": r.label,
                 "reason": r.reason, "detail": r.detail}
                for r in self.unreadable
            ],
            "too_small": [
                {"path": r.path, "split": r.split, "generator": r.generator, "label": r.label,
                 "width": r.width, "height": r.height}
                for r in self.too_small
            ],
            "duplicates": {
                "across_splits_pairs": self.cross_split_duplicate_pairs,
                "within_split_copies": self.within_split_duplicates,
                "groups": [
                    {"sha1": g.sha1, "labels_differ": g.labels_differ,
                     "files": [{"split": s, "label": lab, "path": p} for s, lab, p in g.files]}
                    for g in self.duplicates
                ],
            },
            "leakage_warnings": leakage_warnings(self),
            "metadata_probe": {"auroc": dict(self.probe), "equalizer": self.equalizer or None,
                               "features": list(PROBE_FEATURES), "folds": PROBE_FOLDS},
        }

    def format_table(self, max_bad_fraction: float | None = None) -> str:
        """A readable text report: per-group table, common sizes, bad files, duplicates and leakage warnings."""
        lines = [
            f"Data report: {self.root or '(splits)'}: {self.n_images} images, scanned in {self.seconds:.1f} s",
            "",
        ]
        header = ("split", "generator", "class", "images", "usable", "unreadable", "too_small",
                  "formats", "short side (px)", "JPEG quality")
        rows = []
        for (split, gen, label), recs in self.groups().items():
            c = self.group_counts(recs)
            h = Histograms.of(r for r in recs if self.usable(r))
            rows.append((split, gen, CLASS_NAMES[label], c["images"], c["usable"], c["unreadable"], c["too_small"],
                         shares(h.formats, 2), shares(h.short_side, 2), _quality_summary(h.jpeg_quality)))
        lines += _columns(header, rows)
        lines += ["", "Most common sizes (usable images, all splits):"]
        for label, name in enumerate(CLASS_NAMES):
            lines.append(f"  {name}: {shares(self.histograms(label=label).sizes, 3)}")

        unreadable, small = self.unreadable, self.too_small
        lines += ["", f"Unreadable files: {len(unreadable)}"
                  + (f" ({_reason_counts(unreadable)})" if unreadable else "")]
        lines += [f"  {r.reason:<20} {r.path}" + (f"  ({r.detail})" if r.detail else "")
                  for r in unreadable[:LIST_LIMIT]]
        lines += _more(len(unreadable))
        lines += [f"Smaller than {self.min_size} px: {len(small)}" if self.min_size
                  else "Smaller than the crop: not checked (images are resized before cropping)"]
        lines += [f"  {r.width}x{r.height:<12} {r.path}" for r in small[:LIST_LIMIT]]
        lines += _more(len(small))

        cross = [g for g in self.duplicates if len(g.splits) > 1]
        lines += ["", f"Duplicates across splits: {self.cross_split_duplicate_pairs} pair(s) in {len(cross)} group(s)"
                  f" (copies within a split: {self.within_split_duplicates})"]
        for g in cross[:LIST_LIMIT]:
            files = " | ".join(f"{s}/{CLASS_NAMES[lab]}: {p}" for s, lab, p in g.files)
            lines.append(f"  {g.sha1[:10]}  {files}" + ("  [LABELS DIFFER]" if g.labels_differ else ""))
        lines += _more(len(cross))

        warns = leakage_warnings(self)
        after = f" (after the equalizer {self.equalizer})" if self.equalized is not None else ""
        lines += ["", f"Leakage warnings{after}: {len(warns) or 'none'}"] + [f"  - {w}" for w in warns]
        if self.probe:
            probe = ", ".join(f"{state} {value:.3f}" for state, value in self.probe.items())
            lines += [f"Metadata probe AUROC ({', '.join(PROBE_FEATURES)}; logistic regression, stratified "
                      f"{PROBE_FOLDS}-fold; 0.5 = no leak, 1.0 = the metadata alone give the label): {probe}"]
        limit = DEFAULT_MAX_BAD_FRACTION if max_bad_fraction is None else max_bad_fraction
        empty = self.empty_classes()
        verdict = "OK" if self.bad_fraction <= limit and not empty else "TOO MANY: training stops"
        lines += ["", f"Unusable files: {len(self.bad_files)} of {self.n_images} ({100 * self.bad_fraction:.2f}%), "
                      f"limit data.max_bad_fraction={limit}: {verdict}"]
        lines += [f"  - {p}" for p in empty]
        return "\n".join(lines)


def _quality_summary(counter: Counter) -> str:
    if not counter:
        return "-"
    values = np.repeat(list(counter.keys()), list(counter.values()))
    lo, hi = int(values.min()), int(values.max())
    return f"{int(np.median(values))} (median)" + (f", {lo}-{hi}" if lo != hi else "")


def _unusable(records: list[FileRecord]) -> str:
    return f"all {len(records)} files are unreadable or too small" if records else "no files"


def _reason_counts(records: list[FileRecord]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in Counter(r.reason for r in records).most_common())


def _more(n: int) -> list[str]:
    return [f"  ... and {n - LIST_LIMIT} more (all listed in data_report.json)"] if n > LIST_LIMIT else []


def _columns(header: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(header))]
    return ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()
            for row in cells]


# -- scanning -----------------------------------------------------------------------------------------------
def loader_min_size(datamodule) -> int:
    """The shortest side the datamodule's loader accepts: its crop size when images are cropped at native
    resolution, 0 when they are resized first (``resize_size`` or an equaliser ``size``), so never too small."""
    prep = datamodule.preprocess
    if prep.resize_size is not None or getattr(prep.equalizer, "size", None) is not None:
        return 0
    return int(prep.crop_size)


def _as_splits(source) -> tuple[dict[str, list[Sample]], str | None, int]:
    if isinstance(source, Mapping):
        return {str(k): list(v) for k, v in source.items()}, None, 0
    if hasattr(source, "scan") and hasattr(source, "preprocess"):
        splits = getattr(source, "splits", None) or source.scan()
        return splits, str(source.root), loader_min_size(source)
    raise TypeError(
        f"scan_dataset expects a DetectorDataModule or a dict of split name -> samples, got {type(source).__name__}"
    )


def scan_dataset(
    datamodule_or_splits,
    min_size: int | None = None,
    num_threads: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> DataReport:
    """Read, hash and fully decode every file of every split once, in a thread pool, into a :class:`DataReport`.

    Args:
        datamodule_or_splits: a ``DetectorDataModule`` (its splits, scanning the tree if ``setup`` has not run)
            or a dict ``{split: [Sample, ...]}``.
        min_size: shortest usable side in pixels; None = the datamodule's loader limit (:func:`loader_min_size`),
            or 0 for a dict of splits.
        num_threads: decoding threads (PIL and hashlib release the GIL); None = ``min(16, 2 * cpu count)``.
        progress: show a tqdm bar.
        cache_dir: keep the per-file results in ``<cache_dir>/<key>.json``, keyed by every file's path, size,
            mtime, label, generator and split, so the jobs of a sweep decode the dataset once (None = no cache).
    """
    splits, root, default_min = _as_splits(datamodule_or_splits)
    min_size = default_min if min_size is None else int(min_size)
    jobs = [(sample, split) for split, samples in splits.items() for sample in samples]
    start = time.perf_counter()
    cached = scan_cache_path(jobs, cache_dir)
    records = read_cached_scan(cached) if cached is not None else None
    if records is None:
        records = _inspect_all(jobs, num_threads, progress)
        if cached is not None:
            _write_cached_scan(cached, records)
    else:
        log.info("data check: per-file results from the cache %s", cached)
    return DataReport(records, min_size, root, time.perf_counter() - start, find_duplicates(records))


def _inspect_all(jobs: list[tuple[Sample, str]], num_threads: int | None, progress: bool) -> list[FileRecord]:
    threads = num_threads or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, tqdm(
        total=len(jobs), desc="check data", unit="img", disable=not progress, leave=False
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


def _write_cached_scan(path: Path, records: list[FileRecord]) -> None:
    """Write atomically (temporary file, then rename), so a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"records": [asdict(r) for r in records]}))
        tmp.replace(path)
    except OSError as err:  # a read-only cache folder only costs the next job a re-scan
        log.warning("data check: cannot write the cache %s (%s); the next run scans again", path, err)


# -- checks -------------------------------------------------------------------------------------------------
def check_bad_fraction(report: DataReport, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
    """Raise :class:`BadDataError` when more than ``max_bad_fraction`` of the files are unreadable or too
    small, or when a split / class is left without any usable image."""
    if not 0.0 <= float(max_bad_fraction) <= 1.0:
        raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    bad, empty = report.bad_files, report.empty_classes()
    if report.bad_fraction <= max_bad_fraction and not empty:
        return
    unreadable, small = report.unreadable, report.too_small
    lines = []
    if empty:
        lines += ["A split or class has no usable image left:"] + [f"  - {p}" for p in empty]
    if report.bad_fraction > max_bad_fraction:
        lines.append(
            f"{len(bad)} of {report.n_images} images ({100 * report.bad_fraction:.2f}%) cannot be used, "
            f"more than data.max_bad_fraction={max_bad_fraction}:"
        )
    else:
        lines.append(f"{len(bad)} of {report.n_images} images ({100 * report.bad_fraction:.2f}%) cannot be used:")
    lines.append(f"  unreadable: {len(unreadable)}" + (f" ({_reason_counts(unreadable)})" if unreadable else ""))
    lines.append(f"  smaller than {report.min_size} px (data.crop_size): {len(small)}")
    lines.append("First files:")
    for r in bad[:10]:
        why = (f"{r.reason}" + (f" ({r.detail})" if r.detail else "") if not r.readable
               else f"too small, {r.width}x{r.height} < {report.min_size} px")
        lines.append(f"  {r.path}: {why}")
    lines.append(
        "Fix or remove these files (`python run.py task=check_data data=... data.root=...` lists them all), "
        "or allow more with data.max_bad_fraction=<fraction>, e.g. data.max_bad_fraction=0.05."
    )
    raise BadDataError("\n".join(lines))


def _leak_message(scope: str, what: str, tv: float, real: Counter, synthetic: Counter, extra: str = "",
                  hint: str = EQUALIZER_HINT) -> str:
    return (
        f"{scope}: real and synthetic images differ in {what} (total-variation distance {tv:.2f} > {LEAKAGE_TV_THRESHOLD}): "
        f"real {shares(real)}; synthetic {shares(synthetic)}{extra}. A detector can learn this instead of generator traces; "
        f"equalise it with {hint}."
    )


def _scope_warnings(report: DataReport, scope: str, generator: str | None, skip: set[str],
                    hint: str = EQUALIZER_HINT) -> dict[str, str]:
    real, synthetic = report.histograms(generator=generator, label=0), report.histograms(generator=generator, label=1)
    out = {}
    tv = total_variation(real.formats, synthetic.formats)
    if "format" not in skip and tv > LEAKAGE_TV_THRESHOLD:
        out["format"] = _leak_message(scope, "file format", tv, real.formats, synthetic.formats, hint=hint)
    real_q = Counter({quality_bin(q): n for q, n in real.jpeg_quality.items()})
    synthetic_q = Counter({quality_bin(q): n for q, n in synthetic.jpeg_quality.items()})
    tv = total_variation(real_q, synthetic_q)
    if "quality" not in skip and tv > LEAKAGE_TV_THRESHOLD:
        out["quality"] = _leak_message(scope, f"JPEG quality among JPEG files (bins of {QUALITY_BIN_WIDTH})", tv,
                                       real_q, synthetic_q, hint=hint)
    tv = total_variation(real.short_side, synthetic.short_side)
    if "size" not in skip and tv > LEAKAGE_TV_THRESHOLD:
        out["size"] = _leak_message(scope, "image size (short side, px)", tv, real.short_side, synthetic.short_side,
                                    f" (most common sizes: real {shares(real.sizes, 2)}; synthetic {shares(synthetic.sizes, 2)})", hint)
    return out


def leakage_warnings(report: DataReport) -> list[str]:
    """Warnings for systematic real-vs-synthetic differences in file format, JPEG quality or image size.

    Criterion: over the usable images of all splits, the total-variation distance
    (half the L1 distance of the normalised histograms, 0 = identical, 1 = disjoint)
    between the real and the synthetic histogram exceeds ``LEAKAGE_TV_THRESHOLD`` (0.5) for

    * the format (PIL's ``format``, from the content),
    * the estimated JPEG quality in bins of ``QUALITY_BIN_WIDTH`` (JPEG files only, when both classes have some),
    * the short side in the half-octave bins of ``SHORT_SIDE_EDGES``.

    It is tested on the whole dataset, then per generator (when there are several)
    for the properties the whole-dataset test did not already flag. Empty when
    every property is consistent, e.g. after equalising. When the report has equalized records
    (:func:`add_metadata_probe` with an equalizer), they are judged instead of the files.
    """
    hint = EQUALIZER_HINT if report.equalized is None else "a stronger equalizer (it survives this one)"
    report = report.leakage_view()
    generators = sorted({r.generator for r in report.records})
    scope = f"generator '{generators[0]}'" if len(generators) == 1 else "all generators"
    overall = _scope_warnings(report, scope, None, set(), hint)
    out = list(overall.values())
    if len(generators) > 1:
        for gen in generators:
            out += list(_scope_warnings(report, f"generator '{gen}'", gen, set(overall), hint).values())
    return out


# -- the metadata probe -------------------------------------------------------------------------------------
#: what the metadata probe sees of each file (the format one-hot encoded).
PROBE_FEATURES = ("format", "width", "height", "jpeg_quality (-1 when not JPEG)", "bytes_per_pixel")


def metadata_features(records: Sequence[FileRecord]) -> np.ndarray:
    """``(N, F)`` probe inputs of readable records: one-hot format, width, height, JPEG quality (-1 when not
    JPEG) and bytes per pixel (file size over width x height)."""
    formats = sorted({r.format or "unknown" for r in records})
    rows = []
    for r in records:
        one_hot = [float((r.format or "unknown") == f) for f in formats]
        quality = -1.0 if r.jpeg_quality is None else float(r.jpeg_quality)
        rows.append([*one_hot, float(r.width), float(r.height), quality, r.n_bytes / max(1, r.width * r.height)])
    return np.asarray(rows, dtype=np.float64).reshape(len(records), len(formats) + 4)


def metadata_probe_auroc(records: Iterable[FileRecord], seed: int = 0, folds: int = PROBE_FOLDS) -> float:
    """Cross-validated AUROC of real vs synthetic from the metadata alone (:func:`metadata_features`).

    A standardised logistic regression (scikit-learn) is scored out of fold with a seeded stratified
    ``folds``-fold split (fewer folds when a class has fewer files), and the AUROC of the pooled out-of-fold
    probabilities is returned: 0.5 when the metadata carry no label information, 1.0 when they alone
    separate the classes (e.g. JPEG photos against PNG fakes). NaN with fewer than two files of a class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    usable = [r for r in records if r.readable]
    labels = np.asarray([r.label for r in usable], dtype=np.int64)
    smallest = int(min(np.sum(labels == 0), np.sum(labels == 1))) if usable else 0
    if smallest < 2:
        return float("nan")
    split = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probs = cross_val_predict(probe, metadata_features(usable), labels, cv=split, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, probs))


def equalized_record(record: FileRecord, equalizer) -> FileRecord:
    """``record`` as the equalizer outputs the file: its size, and, when it re-encodes (``jpeg_quality``), format
    JPEG at that quality and the bytes of the output re-encoded with the equalizer's settings. Without a JPEG
    step the pixels keep the file's format and compression, and its bytes per pixel."""
    from features.equalizer import JPEG_SUBSAMPLING

    image = equalizer(load_rgb(record.path))
    width, height = image.size
    quality = getattr(equalizer, "jpeg_quality", None)
    if quality is None:
        per_pixel = record.n_bytes / max(1, record.width * record.height)
        return replace(record, width=width, height=height, n_bytes=int(round(per_pixel * width * height)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING)
    return replace(record, format="JPEG", width=width, height=height, jpeg_quality=int(quality),
                   n_bytes=len(buffer.getvalue()))


def probe_sample(report: DataReport, max_per_class: int = PROBE_MAX_PER_CLASS, seed: int = 0) -> list[FileRecord]:
    """Up to ``max_per_class`` usable records of each class, a seeded random subset, in report order."""
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in (0, 1):
        rows = [i for i, r in enumerate(report.records) if r.label == label and report.usable(r)]
        if len(rows) > max_per_class:
            rows = rng.choice(rows, size=max_per_class, replace=False).tolist()
        keep += rows
    return [report.records[i] for i in sorted(keep)]


def add_metadata_probe(report: DataReport, equalizer=None, seed: int = 0, num_threads: int | None = None,
                       max_per_class: int = PROBE_MAX_PER_CLASS) -> DataReport:
    """Set ``report.probe["raw"]`` (the files as they are) and, with an ``equalizer`` (PIL -> PIL, e.g.
    ``ExtremeEqualizer``), ``report.equalized`` (up to ``max_per_class`` files per class through it, seeded) and
    ``report.probe["equalized"]``; the leakage warnings then judge the equalized files. Returns ``report``."""
    report.probe = {"raw": metadata_probe_auroc([r for r in report.records if report.usable(r)], seed)}
    if equalizer is None:
        return report
    sample = probe_sample(report, max_per_class, seed)
    threads = num_threads or min(16, 2 * (os.cpu_count() or 1))

    def equalize(record: FileRecord) -> FileRecord | None:
        try:
            return equalized_record(record, equalizer)
        except (UnreadableImage, OSError, ValueError) as err:
            log.warning("data check: cannot equalize %s (%s)", record.path, err)
            return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        report.equalized = [r for r in pool.map(equalize, sample) if r is not None]
    report.equalizer = repr(equalizer)
    report.probe["equalized"] = metadata_probe_auroc(report.equalized, seed)
    return report


# -- entry points -------------------------------------------------------------------------------------------
def write_report(report: DataReport, out_dir: str | Path, max_bad_fraction: float | None = None) -> tuple[Path, Path]:
    """Write ``data_report.json`` and ``data_report.txt`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, txt_path = out_dir / "data_report.json", out_dir / "data_report.txt"
    json_path.write_text(json.dumps(report.to_dict(), indent=2))
    txt_path.write_text(report.format_table(max_bad_fraction) + "\n")
    return json_path, txt_path


DATA_STATS_FILE = "data_stats.json"


def size_statistics(report: DataReport, split: str = "train") -> dict[str, Any]:
    """Median, min and max width and height of the readable images of ``split``: the detector's input domain."""
    records = [r for r in report.records if r.split == split and r.readable]
    if not records:
        return {"split": split, "n_images": 0}
    widths = np.array([r.width for r in records], dtype=float)
    heights = np.array([r.height for r in records], dtype=float)
    stats: dict[str, Any] = {"split": split, "n_images": len(records)}
    for name, values in (("width", widths), ("height", heights)):
        stats.update({f"{name}_median": float(np.median(values)), f"{name}_min": int(values.min()),
                      f"{name}_max": int(values.max())})
    return stats


def write_data_stats(report: DataReport, out_dir: str | Path, preprocessing: Mapping[str, Any] | None = None) -> Path:
    """``data_stats.json`` in ``out_dir``: :func:`size_statistics` of the train split and the preprocessing
    sizes; ``detect`` compares its inputs with it."""
    path = Path(out_dir) / DATA_STATS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**size_statistics(report), **dict(preprocessing or {})}, indent=2))
    return path


def max_bad_fraction(cfg: DictConfig, datamodule=None) -> float:
    """``data.max_bad_fraction``, or the datamodule's own default."""
    default = getattr(datamodule, "max_bad_fraction", DEFAULT_MAX_BAD_FRACTION)
    return float(cfg.data.get("max_bad_fraction", default))


def data_check_cache_dir(cfg: DictConfig) -> Path | None:
    """``<paths.cache_dir>/data_checks``, or None when the config has no cache folder."""
    cache_dir = cfg.get("paths", {}).get("cache_dir")
    return Path(cache_dir) / "data_checks" if cache_dir else None


def wait_for_scan(datamodule, cache_dir: Path | None, timeout_s: float = 3600.0, poll_s: float = 2.0) -> DataReport:
    """The data check of a non-zero DDP rank: the report rank 0 computed, read from the scan cache.

    Every rank then judges the same report, so bad data stops them all with the same message instead of
    leaving the other ranks waiting inside ``fit`` for a rank 0 that has raised.
    """
    splits, root, min_size = _as_splits(datamodule)
    jobs = [(sample, split) for split, samples in splits.items() for sample in samples]
    path = scan_cache_path(jobs, cache_dir)
    if path is None:  # no shared cache: each rank scans for itself
        return scan_dataset(datamodule, progress=False)
    deadline = time.monotonic() + timeout_s
    while (records := read_cached_scan(path)) is None:
        if time.monotonic() > deadline:
            raise BadDataError(f"rank 0 wrote no data check to {path} within {timeout_s:.0f} s; see rank 0's log")
        time.sleep(poll_s)
    return DataReport(records, min_size, root, 0.0, find_duplicates(records))


def preflight(cfg: DictConfig, datamodule, logger=None, progress: bool = True, rank: int = 0) -> DataReport:
    """Scan the datamodule's splits before fitting: log the counts (and the report as an artifact) to the
    MLflow ``logger`` if given, warn about format leakage, and raise :class:`BadDataError` when more than
    ``data.max_bad_fraction`` of the files are unusable or a split/class has no usable image. The metadata
    probe AUROC, raw and after the datamodule's equalizer (:func:`add_metadata_probe`), is logged with the counts
    (``data/probe_auroc_raw``, ``data/probe_auroc_equalized``).

    The per-file results are cached under ``paths.cache_dir`` (:func:`scan_dataset`). Under DDP, rank 0
    scans and the other ranks (``rank > 0``) read its results (:func:`wait_for_scan`): one decode of the
    dataset, one verdict on every rank."""
    cache_dir = data_check_cache_dir(cfg)
    if rank > 0:
        report = wait_for_scan(datamodule, cache_dir)
        check_bad_fraction(report, max_bad_fraction(cfg, datamodule))
        return report
    report = scan_dataset(datamodule, progress=progress, cache_dir=cache_dir)
    add_metadata_probe(report, datamodule.preprocess.equalizer, seed=int(cfg.get("seed", 0) or 0))
    limit = max_bad_fraction(cfg, datamodule)
    log.info(
        "data check: %d images, %d unreadable, %d too small, %d duplicate pairs across splits (%.1f s); "
        "metadata probe AUROC %s",
        report.n_images, len(report.unreadable), len(report.too_small), report.cross_split_duplicate_pairs,
        report.seconds, ", ".join(f"{k} {v:.3f}" for k, v in report.probe.items()),
    )
    if logger is not None:
        from experiments import tracking

        tracking.log_metrics(logger, report.summary_metrics(), step=0)
        for path in write_report(report, cfg.paths.output_dir, limit):
            tracking.log_artifact(logger, path, "data")
    for message in leakage_warnings(report):
        warnings.warn(message, DataLeakageWarning, stacklevel=2)
    check_bad_fraction(report, limit)
    return report
