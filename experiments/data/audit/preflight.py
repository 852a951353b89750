"""The data gate before training: scan the splits once (:func:`scan_dataset`), then stop a run whose data is too
broken (:func:`check_bad_fraction`) and warn about leakage. Under DDP only rank 0 calls :func:`preflight`; the
trainer hands its verdict to the other ranks (``experiments.training.callbacks.ShareDataVerdict``).

:func:`preflight` returns the report; the task that calls it logs it (``on_report`` is called before the verdict,
so a run that stops still records what it found). ``task=check_data`` runs the scan alone::

    python run.py task=check_data data=genimage_tiny data.root=/path/to/genimage_tiny
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from experiments.errors import UserError
from experiments.data.audit.inspection import inspect_all, read_cached_scan, scan_cache_path, write_cached_scan
from experiments.data.audit.leakage import DataLeakageWarning, add_metadata_probe, find_duplicates, leakage_warnings
from experiments.data.audit.report import DEFAULT_MAX_BAD_FRACTION, DataReport, reason_counts
from experiments.data.layouts import Sample

log = logging.getLogger(__name__)


class BadDataError(ValueError, UserError):
    """Too many files cannot be used, or a split/class has no usable image at all."""



def loader_min_size(datamodule) -> int:
    """The shortest side the datamodule's loader accepts: its crop size when images are cropped at native
    resolution, 0 when they are resized first (``resize_size`` or an equaliser ``size``), so never too small."""
    prep = datamodule.preprocess
    if prep.resize_size is not None or getattr(prep.equalizer, "size", None) is not None:
        return 0
    return int(prep.crop_size)


def _as_splits(source) -> tuple[dict[str, list[Sample]], str | None, int, list]:
    if isinstance(source, Mapping):
        return {str(k): list(v) for k, v in source.items()}, None, 0, []
    if hasattr(source, "scan") and hasattr(source, "preprocess"):
        splits = getattr(source, "splits", None) or source.scan()
        return splits, str(source.root), loader_min_size(source), list(getattr(source, "skipped_links", []))
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
    splits, root, default_min, skipped_links = _as_splits(datamodule_or_splits)
    min_size = default_min if min_size is None else int(min_size)
    jobs = [(sample, split) for split, samples in splits.items() for sample in samples]
    start = time.perf_counter()
    cached = scan_cache_path(jobs, cache_dir)
    records = read_cached_scan(cached) if cached is not None else None
    if records is None:
        records = inspect_all(jobs, num_threads, progress)
        if cached is not None:
            write_cached_scan(cached, records)
    else:
        log.info("data check: per-file results from the cache %s", cached)
    return DataReport(records, min_size, root, time.perf_counter() - start, find_duplicates(records),
                      skipped_links=skipped_links)


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
    lines.append(f"  unreadable: {len(unreadable)}" + (f" ({reason_counts(unreadable)})" if unreadable else ""))
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


#: the metadata probe's AUROC above which ``task=check_data task.strict=true`` fails (0.5 = the file metadata
#: carry no label information)
PROBE_WARNING_AUROC = 0.65


def strict_problems(report: DataReport, probe_limit: float = PROBE_WARNING_AUROC) -> list[str]:
    """What ``task.strict=true`` fails on besides unusable files: the leakage warnings, a metadata probe above
    ``probe_limit`` (after the equalizer when one is configured) and duplicates across splits."""
    problems = [f"leakage: {w}" for w in leakage_warnings(report)]
    state = "equalized" if "equalized" in report.probe else "raw"
    probe = report.probe.get(state, float("nan"))
    if probe == probe and probe > probe_limit:
        problems.append(f"metadata probe AUROC {probe:.3f} ({state}) is above {probe_limit}: format, size and JPEG "
                        "quality alone tell real from synthetic")
    if report.cross_split_duplicate_pairs:
        problems.append(f"{report.cross_split_duplicate_pairs} duplicate pair(s) across splits (listed above)")
    return problems


@dataclass(frozen=True)
class PreflightSettings:
    """What the data gate needs besides the datamodule.

    ``max_bad_fraction``: the share of unusable files tolerated (``data.max_bad_fraction``); ``cache_dir``: where
    the per-file results are kept (None = no cache); ``seed``: the folds of the metadata probe; ``progress``: show
    a progress bar.
    """

    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    cache_dir: Path | None = None
    seed: int = 0
    progress: bool = True


def data_check_cache_dir(cache_dir: str | Path | None) -> Path | None:
    """``<cache_dir>/data_checks`` (the configs pass ``paths.cache_dir``), or None without a cache folder."""
    return Path(cache_dir) / "data_checks" if cache_dir else None


def preflight(datamodule, settings: PreflightSettings = PreflightSettings(),
              on_report: Callable[[DataReport], None] | None = None) -> DataReport:
    """Scan the datamodule's splits before fitting, warn about format leakage, and raise :class:`BadDataError`
    when more than ``settings.max_bad_fraction`` of the files are unusable or a split/class has no usable image.

    The report includes the metadata probe AUROC, raw and after the datamodule's equalizer
    (:func:`~experiments.data.audit.leakage.add_metadata_probe`). ``on_report`` (e.g. the task's logging of the
    counts and the report files) gets the report before the verdict, so a run that stops has recorded why."""
    report = scan_dataset(datamodule, progress=settings.progress, cache_dir=settings.cache_dir)
    add_metadata_probe(report, datamodule.preprocess.equalizer, seed=settings.seed)
    log.info(
        "data check: %d images, %d unreadable, %d too small, %d duplicate pairs across splits (%.1f s); "
        "metadata probe AUROC %s",
        report.n_images, len(report.unreadable), len(report.too_small), report.cross_split_duplicate_pairs,
        report.seconds, ", ".join(f"{k} {v:.3f}" for k, v in report.probe.items()),
    )
    if on_report is not None:
        on_report(report)
    for message in leakage_warnings(report):
        warnings.warn(message, DataLeakageWarning, stacklevel=2)
    check_bad_fraction(report, settings.max_bad_fraction)
    return report
