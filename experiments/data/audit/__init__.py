"""The data audit: scan a dataset before training and report what would hurt it.

* :mod:`~experiments.data.audit.inspection`: one read of each file (:class:`FileRecord`, the JPEG quality, the
  content hash), the scan in a process pool;
* :mod:`~experiments.data.audit.store`: the per-file results kept between runs (:class:`CheckStore`, SQLite, keyed
  by the path relative to the dataset root, size and mtime);
* :mod:`~experiments.data.audit.sampling`: ``data.check`` (:class:`DataCheck`: every file, a stratified sample,
  or none);
* :mod:`~experiments.data.audit.leakage`: duplicates across splits, the real-vs-synthetic leakage warnings and
  the metadata probe;
* :mod:`~experiments.data.audit.report`: :class:`DataReport`, its table and JSON, ``data_stats.json``;
* :mod:`~experiments.data.audit.preflight`: the gate before training (:func:`preflight`, :func:`check_bad_fraction`,
  run by rank 0 alone under DDP).

The report is returned; the tasks log it (``experiments.tasks.train``, ``experiments.tasks.check_data``).
"""

from experiments.data.audit.histograms import Histograms, quality_bin, shares, short_side_bin, total_variation
from experiments.data.audit.inspection import FileRecord, content_hash, estimate_jpeg_quality, inspect_file
from experiments.data.audit.leakage import (
    DataLeakageWarning,
    DuplicateGroup,
    add_metadata_probe,
    find_duplicates,
    leakage_warnings,
    metadata_features,
    metadata_probe_auroc,
    metadata_probe_shares,
    probe_warnings,
)
from experiments.data.audit.preflight import (
    PROBE_WARNING_AUROC,
    BadDataError,
    DataCheckOff,
    PreflightSettings,
    check_bad_fraction,
    data_check_cache_dir,
    loader_min_size,
    preflight,
    scan_dataset,
    strict_problems,
)
from experiments.data.audit.sampling import DataCheck, stratified_sample
from experiments.data.audit.store import CheckStore
from experiments.data.audit.report import (
    DATA_STATS_FILE,
    DEFAULT_MAX_BAD_FRACTION,
    DataReport,
    size_statistics,
    write_data_stats,
    write_report,
)

__all__ = [
    "PROBE_WARNING_AUROC", "strict_problems", "BadDataError", "DATA_STATS_FILE", "DEFAULT_MAX_BAD_FRACTION", "DataLeakageWarning", "DataReport",
    "DuplicateGroup", "FileRecord", "Histograms", "PreflightSettings", "add_metadata_probe", "check_bad_fraction",
    "data_check_cache_dir", "estimate_jpeg_quality", "find_duplicates", "inspect_file", "leakage_warnings",
    "loader_min_size", "metadata_features", "metadata_probe_auroc",
    "metadata_probe_shares", "probe_warnings", "preflight", "quality_bin", "scan_dataset",
    "shares", "short_side_bin", "size_statistics", "total_variation", "write_data_stats",
    "write_report", "CheckStore", "DataCheck", "DataCheckOff", "content_hash", "stratified_sample",
]
