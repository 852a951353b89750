"""``task=analyze``: spectral fingerprints of a dataset, after Corvi et al. (2023).

No detector is needed::

    python run.py task=analyze data=genimage_tiny data.root=/path/to/genimage_tiny

For every group (each class, each generator, each generator x class) a seeded random subset of at most
``task.max_images`` images of ``task.splits`` is read at the data config's evaluation preprocessing
(``crop_size``/``resize_size``, no augmentation) in batches of ``task.batch_size``; the noise-residual
spectra and statistics come from :mod:`experiments.evaluation.residual_statistics`.

Written to ``cfg.paths.output_dir``: ``spectral_by_{class,generator,generator_class}.png``
(:func:`experiments.evaluation.spectra.plot_spectral_analysis`), ``spectral_statistics.{md,csv}`` and
``spectral_profiles.npz``; all logged to MLflow under ``analysis/`` in a run tagged
``task=analyze``, with the statistics as metrics ``analyze/<grouping>/<group>/<statistic>``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from experiments import tracking
from experiments.evaluation.metrics import sanitize_metric_component
from experiments.evaluation.residual_statistics import (
    STATISTICS,
    Results,
    residual_statistics,
    save_profiles,
    statistics_rows,
    write_statistics,
)
from experiments.evaluation.spectra import plot_spectral_analysis

ARTIFACT_DIR = "analysis"


def analyze(cfg: DictConfig) -> Results:
    """Run ``task=analyze``; return ``{grouping: {group: stats}}`` (arrays and statistics)."""
    from experiments.training.builders import build_datamodule

    task = cfg.task
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup()
    splits = list(task.get("splits") or ["train", "val", "test"])
    unknown = sorted(set(splits) - set(datamodule.splits))
    if unknown:
        raise ValueError(f"task.splits names unknown splits {unknown}; choose from {sorted(datamodule.splits)}")
    samples = [s for split in splits for s in datamodule.splits[split]]
    results = residual_statistics(
        samples, datamodule.preprocess, datamodule.generator_names,
        max_images=int(task.max_images), seed=int(task.get("seed", cfg.get("seed", 0)) or 0),
        n_radial=int(task.get("n_radial", 64)), n_angular=int(task.get("n_angular", 64)),
        profile_source=str(task.get("profile_source", "image")),
        batch_size=int(task.batch_size), num_workers=int(cfg.data.get("num_workers", 0) or 0))

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [plot_spectral_analysis(stats, out_dir / f"spectral_by_{grouping}.png")
             for grouping, stats in results.items() if stats]
    files += write_statistics(results, out_dir, title=f"{cfg.data.name}: noise-residual statistics")
    files.append(save_profiles(results, out_dir / "spectral_profiles.npz"))
    run_id = log_to_mlflow(cfg, results, [Path(f) for f in files], splits)
    print_statistics(results, f"{cfg.data.name}: noise-residual statistics")
    tracking.announce_outputs(out_dir, run_id, cfg.logger.tracking_uri)
    return results


def log_to_mlflow(cfg: DictConfig, results: Results, files: Iterable[Path], splits: Sequence[str]) -> str:
    """A new run of ``analyze-detectors-<data>`` (``logger.task_experiment_name``) tagged ``task=analyze``: the config
    (:func:`experiments.tracking.create_run`), the splits read, statistics, files. Returns its id."""
    run_id = tracking.create_run(cfg, tracking.task_experiment_name(cfg), f"analyze-{cfg.data.name}",
                                 {"task": "analyze", "data": cfg.data.name})
    client = tracking.mlflow_client(cfg.logger.tracking_uri)
    client.log_param(run_id, "analyze/splits", ",".join(splits))
    metrics = {}
    for row in statistics_rows(results):
        prefix = f"analyze/{row['kind']}/{sanitize_metric_component(row['group'])}"
        metrics[f"{prefix}/n_images"] = float(row["n_images"])
        metrics.update({f"{prefix}/{name}": float(row[name]) for name in STATISTICS})
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, 0) for k, v in metrics.items() if v == v]  # NaN dropped
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])
    for path in files:
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    tracking.end_run(client, run_id)
    return run_id


def print_statistics(results: Results, title: str) -> None:
    table = Table(title=title)
    for column in ("kind", "group", "n", *STATISTICS):
        table.add_column(column, justify="left" if column in ("kind", "group") else "right")
    for row in statistics_rows(results):
        table.add_row(row["kind"], row["group"], str(row["n_images"]), *(f"{row[s]:.4g}" for s in STATISTICS))
    Console(width=200).print(table)
