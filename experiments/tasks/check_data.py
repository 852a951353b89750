"""``task=check_data``: scan ``cfg.data`` and print what would hurt training (:mod:`experiments.data.audit`).

    python run.py task=check_data data=genimage_tiny data.root=/path/to/genimage_tiny [task.strict=true]
        [data.verify=/path/to/manifest.csv]

It also writes the tree's checksummed ``manifest.csv`` (:mod:`experiments.data.integrity`); with
``data.verify`` it lists the missing, changed and extra files against that manifest and exits 2 if any.

A gate for job scripts and CI: the command exits 0 when training on the data would go ahead, and 2, with the
reason, whenever training would stop on it (too many unusable files, a class without usable images, a layout
error). Leakage warnings alone are not failures; ``task.strict=true`` also fails on them, on a metadata probe
above :data:`~experiments.data.audit.PROBE_WARNING_AUROC` and on duplicates across splits.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from experiments.data.audit import (
    BadDataError,
    DataReport,
    check_bad_fraction,
    data_check_cache_dir,
    scan_dataset,
    strict_problems,
    write_report,
)
from experiments.data import integrity
from experiments.data.walk import collector_paused
from experiments.data.audit.preflight import add_stored_probe, check_store_path
from experiments.training.builders import build_datamodule
from experiments.tracking import announce_outputs


@collector_paused()  # the report's records and the manifest's rows hold no cycles (see collector_paused)
def check_data(cfg: DictConfig) -> DataReport:
    """Scan ``cfg.data``, print the report, write ``data_report.{json,txt}`` to ``cfg.paths.output_dir`` and
    return the :class:`~experiments.data.audit.DataReport`; then raise :class:`~experiments.data.audit.BadDataError`
    (exit status 2) when training would stop on the data, or, with ``task.strict=true``, on any strict problem.

    The report includes the metadata probe (:func:`~experiments.data.audit.add_metadata_probe`, kept in the
    store by :func:`~experiments.data.audit.preflight.add_stored_probe`): the AUROC of
    real vs synthetic from the file metadata alone (format, size, bytes per pixel, JPEG quality, quantisation-table
    fingerprint, chroma subsampling, EXIF and its Software tag, bit depth) and each feature family's share of its
    decision, on the files and after the configured equalizer (``equalizer=extreme``), whose output the leakage
    warnings then judge (a probe above :data:`~experiments.data.audit.PROBE_WARNING_AUROC` after it is one). ``data.check``
    chooses every file, a stratified sample or none; the per-file results are kept under
    ``paths.cache_dir/data_checks`` (:class:`~experiments.data.audit.store.CheckStore`)."""
    datamodule = build_datamodule(cfg)
    datamodule.prepare_tree()
    splits = datamodule.check_layout()  # one walk: the check and the manifest share it
    seed = int(cfg.get("seed", 0) or 0)
    cache_dir = data_check_cache_dir((cfg.get("paths") or {}).get("cache_dir"))
    report = scan_dataset(datamodule, cache_dir=cache_dir, seed=seed)
    add_stored_probe(report, datamodule.preprocess.equalizer, seed, check_store_path(cache_dir, datamodule.name))
    limit = float(datamodule.max_bad_fraction)
    table = report.format_table(limit)
    print(table)
    json_path, txt_path = write_report(report, cfg.paths.output_dir, limit, table)
    entries = integrity.build_manifest(splits, known=report.content_digests())  # one hash pass: the check's
    manifest = integrity.write_manifest(entries, Path(cfg.paths.output_dir) / integrity.MANIFEST_NAME)
    print(f"\nWrote {txt_path}, {json_path} and {manifest}")
    if datamodule.verify:  # data.verify=<manifest>: missing, changed and extra files end the check (exit 2)
        print(integrity.verify(entries, datamodule.verify).describe(datamodule.verify))
    announce_outputs(cfg.paths.output_dir, None, cfg.logger.tracking_uri)
    check_bad_fraction(report, limit)  # the verdict training would reach: exit 2 with its message
    if (cfg.get("task") or {}).get("strict", False):
        problems = strict_problems(report)
        if problems:
            raise BadDataError("task.strict=true: the data check found " + f"{len(problems)} problem(s):\n"
                               + "\n".join(f"  - {p}" for p in problems))
    return report
