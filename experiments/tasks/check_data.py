"""``task=check_data``: scan ``cfg.data`` and print what would hurt training (:mod:`experiments.data.audit`).

    python run.py task=check_data data=genimage_tiny data.root=/path/to/genimage_tiny
"""

from __future__ import annotations

from omegaconf import DictConfig

from experiments.data.audit import DataReport, add_metadata_probe, scan_dataset, write_report
from experiments.training.builders import build_datamodule
from experiments.tracking import announce_outputs


def check_data(cfg: DictConfig) -> DataReport:
    """Scan ``cfg.data``, print the report, write ``data_report.{json,txt}`` to ``cfg.paths.output_dir`` and
    return the :class:`~experiments.data.audit.DataReport`. Reports, never raises, on bad files.

    The report includes the metadata probe (:func:`~experiments.data.audit.add_metadata_probe`): the AUROC of
    real vs synthetic from format, size, JPEG quality and bytes per pixel alone, on the files and after the
    configured equalizer (``equalizer=extreme``), whose output the leakage warnings then judge."""
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    report = scan_dataset(datamodule)
    add_metadata_probe(report, datamodule.preprocess.equalizer, seed=int(cfg.get("seed", 0) or 0))
    limit = float(datamodule.max_bad_fraction)
    print(report.format_table(limit))
    json_path, txt_path = write_report(report, cfg.paths.output_dir, limit)
    print(f"\nWrote {txt_path} and {json_path}")
    announce_outputs(cfg.paths.output_dir, None, cfg.logger.tracking_uri)
    return report
