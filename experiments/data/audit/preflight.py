"""The data gate before training: scan the splits once (:func:`scan_dataset`), then stop a run whose data is too
broken (:func:`check_bad_fraction`) and warn about leakage. Under DDP only rank 0 calls :func:`preflight`; the
trainer hands its verdict to the other ranks (``experiments.training.callbacks.ShareDataVerdict``).

:func:`preflight` returns the report; the task that calls it logs it (``on_report`` is called before the verdict,
so a run that stops still records what it found). ``task=check_data`` runs the scan alone::

    python run.py task=check_data data=genimage_tiny data.root=/path/to/genimage_tiny
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import Callable, Mapping

from experiments.errors import UserError
from experiments.data.audit.inspection import (
    CONTENT_FIELDS,
    FileRecord,
    inspect_all,
    inspect_paths,
    records_from,
)
from experiments.data.audit.leakage import (
    PROBE_FEATURES,
    PROBE_FOLDS,
    PROBE_MAX_PER_CLASS,
    PROBE_WARNING_AUROC,
    DataLeakageWarning,
    add_metadata_probe,
    find_duplicates,
    leakage_warnings,
    probe_warnings,
)
from experiments.data.audit.report import DEFAULT_MAX_BAD_FRACTION, DataReport, reason_counts
from experiments.data.audit.sampling import DataCheck, stratified_sample
from experiments.data.audit.store import STORE_VERSION, CheckStore, file_keys
from experiments.data.layouts import Sample
from experiments.data.walk import collector_paused
from experiments.safe_paths import plain_name

log = logging.getLogger(__name__)


class BadDataError(ValueError, UserError):
    """Too many files cannot be used, or a split/class has no usable image at all."""


class DataCheckOff(UserWarning):
    """``data.check=off``: the files were not checked."""



def loader_min_size(datamodule) -> int:
    """The shortest side the datamodule's loader accepts: its crop size when images are cropped at native
    resolution, 0 when they are resized first (``resize_size`` or an equaliser ``size``), so never too small."""
    prep = datamodule.preprocess
    if prep.resize_size is not None or getattr(prep.equalizer, "size", None) is not None:
        return 0
    return int(prep.crop_size)


@dataclass(frozen=True)
class _Source:
    splits: dict[str, list[Sample]]
    root: str | None = None
    min_size: int = 0
    skipped_links: list = field(default_factory=list)
    name: str = "splits"
    check: str = "auto"


def _as_splits(source) -> tuple[dict[str, list[Sample]], str | None, int, list]:
    found = _source(source)
    return found.splits, found.root, found.min_size, found.skipped_links


def _source(source) -> _Source:
    if isinstance(source, Mapping):
        return _Source({str(k): list(v) for k, v in source.items()})
    if hasattr(source, "scan") and hasattr(source, "preprocess"):
        keep = getattr(source, "check_layout", None)  # the datamodule's walk, done once and kept
        splits = keep() if callable(keep) else (getattr(source, "splits", None) or source.scan())
        return _Source(splits, str(source.root), loader_min_size(source), list(getattr(source, "skipped_links", [])),
                       str(getattr(source, "name", "dataset")), getattr(source, "check", "auto"))
    raise TypeError(
        f"scan_dataset expects a DetectorDataModule or a dict of split name -> samples, got {type(source).__name__}"
    )


def check_store_path(cache_dir: str | Path | None, dataset: str) -> Path | None:
    """The per-file store of ``dataset`` (``data.name``) under ``cache_dir`` (``<paths.cache_dir>/data_checks``)."""
    return None if cache_dir is None else Path(cache_dir) / f"{plain_name(dataset, 'data.name')}.sqlite"


def inspect_with_store(jobs: list[tuple[Sample, str]], store_path: Path | None, workers: int | None = None,
                       progress: bool = False) -> tuple[list[FileRecord], int]:
    """The records of ``jobs``, from the store where a file's relative path, size and mtime match, the others
    inspected (:func:`~experiments.data.audit.inspection.inspect_paths`) and stored; and how many were inspected.
    The whole list is then stored as one scan, which the next check of the same files reads in one piece."""
    if store_path is None:
        return inspect_all(jobs, workers, progress), len(jobs)
    keys = file_keys([s.path for s, _ in jobs], [s.relpath or os.path.abspath(s.path) for s, _ in jobs])
    with CheckStore(store_path) as store:
        fields = store.scan(keys)
        if fields is not None:  # the same files, sizes and mtimes as a stored scan
            return records_from(jobs, fields), 0
        fields = store.lookup(keys)
        missing = [i for i, f in enumerate(fields) if f is None]
        if missing:
            fresh = inspect_paths([jobs[i][0].path for i in missing], workers, progress)
            for i, f in zip(missing, fresh):
                fields[i] = f
            store.put((keys[i] for i in missing), fresh)
        store.put_scan(keys, fields)
    return records_from(jobs, fields), len(missing)


@collector_paused()  # a scan builds a record per file and no cycle (see collector_paused)
def scan_dataset(
    datamodule_or_splits,
    min_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    check: "str | DataCheck | None" = None,
    seed: int = 0,
) -> DataReport:
    """Read, hash and fully decode the files of every split once, in a process pool, into a :class:`DataReport`.

    Args:
        datamodule_or_splits: a ``DetectorDataModule`` (its splits, scanning the tree if ``setup`` has not run)
            or a dict ``{split: [Sample, ...]}``.
        min_size: shortest usable side in pixels; None = the datamodule's loader limit (:func:`loader_min_size`),
            or 0 for a dict of splits.
        workers: inspection processes; None = one per core.
        progress: show a progress bar.
        cache_dir: keep the per-file results in ``<cache_dir>/<data.name>.sqlite``
            (:class:`~experiments.data.audit.store.CheckStore`, keyed by the path relative to the dataset root,
            size and mtime), so the jobs of a sweep, and the same dataset mounted elsewhere, decode it once.
        check: ``data.check`` (:class:`~experiments.data.audit.sampling.DataCheck`); None = the datamodule's
            ``check`` (``auto`` for a dict of splits). The report says which mode was used and why.
        seed: the seed of the stratified sample.
    """
    source = _source(datamodule_or_splits)
    min_size = source.min_size if min_size is None else int(min_size)
    jobs = [(sample, split) for split, samples in source.splits.items() for sample in samples]
    start = time.perf_counter()
    used, why = DataCheck.parse(source.check if check is None else check).resolve(len(jobs))
    log.info("data check: %s", why)
    if used.mode == "off":
        warnings.warn(f"{why}: unreadable, too small and duplicate files are not looked for; training stops on "
                      "none of them (data.check=auto turns the check back on)", DataCheckOff, stacklevel=2)
        return DataReport([], min_size, source.root, 0.0, [], skipped_links=source.skipped_links, check=why,
                          population=len(jobs), checked=False)
    population = len(jobs)
    if used.mode == "sample":
        jobs = [jobs[i] for i in stratified_sample(jobs, used.n, seed)]
    records, inspected = inspect_with_store(jobs, check_store_path(cache_dir, source.name), workers, progress)
    if cache_dir is not None:
        log.info("data check: %d of %d files from the store %s, %d inspected", len(jobs) - inspected, len(jobs),
                 check_store_path(cache_dir, source.name), inspected)
    return DataReport(records, min_size, source.root, time.perf_counter() - start, find_duplicates(records),
                      skipped_links=source.skipped_links, check=why, population=population)


#: bump when what the stored metadata probe means changes
PROBE_RESULT_VERSION = 2


def probe_key(report: DataReport, equalizer, seed: int, max_per_class: int = PROBE_MAX_PER_CLASS) -> str:
    """A digest of what :func:`~experiments.data.audit.leakage.add_metadata_probe` computes from: every record's
    split, generator, label and content (its hash and why it is unreadable: the other
    :data:`~experiments.data.audit.inspection.CONTENT_FIELDS` follow from the bytes, under one
    :data:`~experiments.data.audit.store.STORE_VERSION`), in order, the shortest usable side, the equalizer, the
    seed and the probe's features, folds and sample size."""
    digest = hashlib.sha256(repr((PROBE_RESULT_VERSION, STORE_VERSION, PROBE_FEATURES, PROBE_FOLDS, int(seed),
                                  int(max_per_class), report.min_size, repr(equalizer))).encode())
    get = attrgetter("split", "generator", "label", "sha256", "reason")
    digest.update(repr([get(r) for r in report.records]).encode())
    return "probe:" + digest.hexdigest()


def _probe_value(report: DataReport) -> dict:
    index = {r.path: i for i, r in enumerate(report.records)}  # an equalized record keeps its file's path
    equalized = None if report.equalized is None else [
        [index[r.path], [getattr(r, f) for f in CONTENT_FIELDS]] for r in report.equalized]
    return {"probe": report.probe, "shares": report.probe_shares, "equalizer": report.equalizer,
            "equalized": equalized}


def _restore_probe(report: DataReport, value: dict) -> None:
    report.probe = {k: float(v) for k, v in value["probe"].items()}
    report.probe_shares = {k: {f: float(w) for f, w in v.items()} for k, v in value["shares"].items()}
    report.equalizer = value["equalizer"]
    if value["equalized"] is not None:
        report.equalized = [replace(report.records[i], **dict(zip(CONTENT_FIELDS, fields)))
                            for i, fields in value["equalized"]]


def add_stored_probe(report: DataReport, equalizer=None, seed: int = 0, store_path: Path | None = None,
                     max_per_class: int = PROBE_MAX_PER_CLASS) -> DataReport:
    """:func:`~experiments.data.audit.leakage.add_metadata_probe`, kept in the per-file store at ``store_path``
    under :func:`probe_key`: a check of unchanged files (same records, settings and equalizer) reads the AUROCs
    and the equalized records back instead of fitting and equalizing again. Returns ``report``."""
    if store_path is None:
        return add_metadata_probe(report, equalizer, seed=seed, max_per_class=max_per_class)
    key = probe_key(report, equalizer, seed, max_per_class)
    with CheckStore(store_path) as store:
        value = store.result(key)
        if value is not None:
            try:
                _restore_probe(report, value)
                log.info("data check: metadata probe from the store %s", store_path)
                return report
            except (KeyError, IndexError, TypeError, ValueError) as err:
                log.warning("data check: the stored metadata probe cannot be read (%s); it is computed again", err)
        add_metadata_probe(report, equalizer, seed=seed, max_per_class=max_per_class)
        store.put_result(key, _probe_value(report))
    return report


def check_bad_fraction(report: DataReport, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
    """Raise :class:`BadDataError` when more than ``max_bad_fraction`` of the files are unreadable or too
    small, or when a split / class is left without any usable image."""
    if not 0.0 <= float(max_bad_fraction) <= 1.0:
        raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    bad, empty = report.bad_files, report.empty_classes()
    if report.bad_fraction <= max_bad_fraction and not empty:
        return
    unreadable, small = report.unreadable, report.too_small
    lines = [f"(an estimate from a stratified sample of {report.n_images} of {report.population} files; "
             "data.check=full reads them all)"] if report.sampled else []
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


def strict_problems(report: DataReport, probe_limit: float = PROBE_WARNING_AUROC) -> list[str]:
    """What ``task.strict=true`` fails on besides unusable files: the leakage warnings, a metadata probe above
    ``probe_limit`` (after the equalizer when one is configured) and duplicates across splits."""
    problems = [f"leakage: {w}" for w in leakage_warnings(report)]
    state = "equalized" if "equalized" in report.probe else "raw"
    probe = report.probe.get(state, float("nan"))
    if probe == probe and probe > probe_limit:
        problems.append(f"metadata probe AUROC {probe:.3f} ({state}) is above {probe_limit}: the file metadata "
                        "alone tell real from synthetic")
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


@collector_paused()  # the report's records hold no cycles (see collector_paused)
def preflight(datamodule, settings: PreflightSettings = PreflightSettings(),
              on_report: Callable[[DataReport], None] | None = None) -> DataReport:
    """Scan the datamodule's splits before fitting, warn about format leakage, and raise :class:`BadDataError`
    when more than ``settings.max_bad_fraction`` of the files are unusable or a split/class has no usable image.

    The report includes the metadata probe AUROC, raw and after the datamodule's equalizer
    (:func:`~experiments.data.audit.leakage.add_metadata_probe`). ``on_report`` (e.g. the task's logging of the
    counts and the report files) gets the report before the verdict, so a run that stops has recorded why."""
    report = scan_dataset(datamodule, progress=settings.progress, cache_dir=settings.cache_dir, seed=settings.seed)
    add_stored_probe(report, datamodule.preprocess.equalizer, settings.seed,
                     check_store_path(settings.cache_dir, str(getattr(datamodule, "name", "dataset"))))
    log.info(
        "data check: %d images, %d unreadable, %d too small, %d duplicate pairs across splits (%.1f s); "
        "metadata probe AUROC %s",
        report.n_images, len(report.unreadable), len(report.too_small), report.cross_split_duplicate_pairs,
        report.seconds, ", ".join(f"{k} {v:.3f}" for k, v in report.probe.items()),
    )
    if on_report is not None:
        on_report(report)
    for message in leakage_warnings(report) + probe_warnings(report):
        warnings.warn(message, DataLeakageWarning, stacklevel=2)
    check_bad_fraction(report, settings.max_bad_fraction)
    return report
