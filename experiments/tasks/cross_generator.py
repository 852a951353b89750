"""``task=cross_generator``: the cross-generator matrices of two protocols, read by their ``protocol`` tag.

``protocol=train_on_one`` (GenImage's: train on one generator, test on all;
``experiment=train_on_one``) and
``protocol=leave_one_out`` (train on all generators but one, test on the
held-out one; ``experiment=leave_one_out``, one row ``all_but_<generator>`` per
held-out generator, whose only cell is off the diagonal).

The runs come from the protocol's preset (one training run per
model and train generator, tagged ``protocol`` and ``train_generator``;
the test split holds every generator's test images, and ``train.py`` logs
``test/<generator>/auc`` and ``test/<generator>/accuracy``). For each model and
metric this task builds the generator x generator matrix (rows = train
generator, columns = test generator), writes a heatmap PNG and a CSV, reports
the diagonal mean (in-distribution) and the off-diagonal mean (unseen
generators), prints them and logs everything to MLflow in a run tagged
``task=cross_generator``.

The matrices come from :mod:`experiments.evaluation.generator_matrix`; the MLflow and file I/O
live in :func:`fetch_records` and :func:`cross_generator`.
"""

from __future__ import annotations

import csv
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from experiments.evaluation.curves import plot_heatmap
from experiments.evaluation.generator_matrix import build_matrix, cell_intervals, records_from_run, summarize
from experiments.evaluation.metrics import sanitize_metric_component
from experiments.runs import finished_training_runs, select_runs, tag
from experiments.runs import NoRunsFound
from experiments.tracking import resolve_tracking_uri
from experiments.tracking import announce_outputs, experiment_id, task_experiment_name

#: The protocols, as the ``protocol`` tag of their training runs spells them.
PROTOCOLS = ("train_on_one", "leave_one_out")

# -- MLflow ---------------------------------------------------------------------------------------------------
def fetch_records(client: mlflow.MlflowClient, experiment_name: str, metric_names: Sequence[str],
                  select: str = "latest", protocol: str = "train_on_one") -> list[dict[str, Any]]:
    """Records of the finished training runs of ``protocol`` in an experiment (see :func:`records_from_run`).

    ``select="latest"`` keeps the newest run per (model, train generator, seed).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"task.protocol={protocol!r} is not one of {sorted(PROTOCOLS)}")
    runs = finished_training_runs(client, experiment_name,
                                  hint=f"Run the protocol first: python run.py -m experiment={protocol} "
                                       f"model=..., then python run.py task=cross_generator experiment={protocol}")
    runs = [run for run in runs if run.data.tags.get("protocol") == protocol]

    def key(run) -> tuple[str, str, str] | None:
        if "train_generator" not in run.data.tags:
            return None
        return tag(run, "model"), tag(run, "train_generator"), tag(run, "seed")

    records: list[dict[str, Any]] = []
    for run in select_runs(runs, key, select):
        model, train_generator, seed = key(run)
        train = sanitize_metric_component(train_generator)  # as the metric names spell it
        records += records_from_run(model, train, seed, run.data.metrics, metric_names)
    return records


# -- the task ------------------------------------------------------------------------------------------------
def _write_matrix_csv(path: Path, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["train \\ test", *cols])
        for name, values in zip(rows, matrix):
            writer.writerow([name, *values.tolist()])
    return path


def _write_cells_csv(path: Path, matrices: Mapping, intervals: Mapping) -> Path:
    """Every cell of every matrix in long format: model, metric, train, test, value and its bootstrap interval."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "metric", "train", "test", "value", "ci_low", "ci_high"])
        for (model, metric), (matrix, rows, cols) in matrices.items():
            low, high = intervals[(model, metric)]
            for i, train in enumerate(rows):
                for j, test in enumerate(cols):
                    if not math.isnan(matrix[i, j]):
                        writer.writerow([model, metric, train, test, matrix[i, j], low[i, j], high[i, j]])
    return path


def cross_generator(cfg: DictConfig) -> dict[str, Any]:
    """Build, write, print and log the cross-generator matrices of every model in ``cfg.task.experiment_name``."""
    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = cfg.task.experiment_name
    metric_names = list(cfg.task.metrics)
    protocol = cfg.task.get("protocol", "train_on_one")
    records = fetch_records(client, experiment, metric_names, cfg.task.get("select", "latest"), protocol)
    if not records:
        raise NoRunsFound(f"no finished {protocol} runs (tag protocol={protocol}) in '{experiment}'; run "
                          f"python run.py -m experiment={protocol} model=... first")

    out_dir = Path(cfg.paths.report_dir) / "cross_generator"
    out_dir.mkdir(parents=True, exist_ok=True)
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_model[record["model"]].append(record)

    matrices: dict[tuple[str, str], tuple[np.ndarray, list[str], list[str]]] = {}
    intervals: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    summary: dict[tuple[str, str], dict[str, float]] = {}
    artifacts: list[Path] = []
    for model in sorted(by_model):
        for metric in metric_names:
            matrix, rows, cols = build_matrix(by_model[model], metric)
            matrices[(model, metric)] = (matrix, rows, cols)
            intervals[(model, metric)] = cell_intervals(by_model[model], metric, rows, cols)
            summary[(model, metric)] = summarize(matrix, rows, cols)
            stem = f"{model}_{metric}"
            artifacts.append(plot_heatmap(matrix, rows, cols, out_dir / f"{stem}.png",
                                          title=f"{model}: cross-generator {metric}", fmt=".3f",
                                          vmin=0.0, vmax=1.0))
            artifacts.append(_write_matrix_csv(out_dir / f"{stem}.csv", matrix, rows, cols))
    summary_csv = out_dir / "summary.csv"
    with summary_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "metric", "diagonal_mean", "off_diagonal_mean", "off_diagonal_min"])
        for (model, metric), values in summary.items():
            writer.writerow([model, metric, values["diagonal_mean"], values["off_diagonal_mean"],
                             values["off_diagonal_min"]])
    artifacts += [summary_csv, _write_cells_csv(out_dir / "cells.csv", matrices, intervals)]

    run_id = _log_run(client, experiment, summary, artifacts,
                      experiment_id(client, task_experiment_name(cfg), cfg.logger.get("artifact_location")), protocol)
    _print_summary(experiment, matrices, intervals, summary, float(cfg.stats.confidence))
    announce_outputs(out_dir, run_id, uri)
    return {"matrices": matrices, "intervals": intervals, "summary": summary, "records": records, "run_id": run_id,
            "out_dir": out_dir, "artifacts": artifacts}


def _log_run(client: mlflow.MlflowClient, experiment: str, summary: Mapping[tuple[str, str], Mapping[str, float]],
             artifacts: Sequence[Path], exp_id: str, protocol: str = "train_on_one") -> str:
    """Log the summary and files to a new run of ``exp_id`` (``cross_generator-<data>``, apart from training)."""
    run = client.create_run(exp_id, run_name="cross_generator", tags={"task": "cross_generator", "protocol": protocol,
                                                                      "reported_experiment": experiment})
    now = int(time.time() * 1000)
    metrics = [Metric(f"cross_generator/{sanitize_metric_component(model)}/{metric}/{name}", value, now, 0)
               for (model, metric), values in summary.items() for name, value in values.items()
               if not math.isnan(value)]
    if metrics:
        client.log_batch(run.info.run_id, metrics=metrics)
    for path in artifacts:
        client.log_artifact(run.info.run_id, str(path), "cross_generator")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _cell_text(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.3f}, {high:.3f}]"


def _print_summary(experiment: str, matrices: Mapping, intervals: Mapping, summary: Mapping,
                   confidence: float = 0.95) -> None:
    console = Console(width=max(100, Console().width))
    for (model, metric), (matrix, rows, cols) in matrices.items():
        low, high = intervals[(model, metric)]
        table = Table(title=f"{experiment}: {model} {metric} (rows: trained on, columns: tested on; "
                            f"[{confidence:.0%} bootstrap interval over that generator's test images])")
        table.add_column("train \\ test")
        for col in cols:
            table.add_column(col, justify="right")
        for i, name in enumerate(rows):
            table.add_row(name, *(_cell_text(matrix[i, j], low[i, j], high[i, j]) for j in range(len(cols))))
        console.print(table)
    table = Table(title=f"{experiment}: cross-generator summary")
    for header in ("model", "metric", "diagonal mean", "off-diagonal mean", "worst unseen"):
        table.add_column(header, justify="left" if header in ("model", "metric") else "right")
    for (model, metric), values in summary.items():
        table.add_row(model, metric, *(f"{values[k]:.4f}" if not math.isnan(values[k]) else "n/a"
                                       for k in ("diagonal_mean", "off_diagonal_mean", "off_diagonal_min")))
    console.print(table)
