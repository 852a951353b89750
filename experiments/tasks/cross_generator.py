"""``task=cross_generator``: the cross-generator matrices of two protocols, read by their ``protocol`` tag.

``protocol=train_on_one`` (GenImage's: train on one generator, test on all;
``experiment=train_on_one``, tagged ``protocol=logo`` before its rename) and
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

:func:`build_matrix` and :func:`summarize` are pure; the MLflow and file I/O
live in :func:`fetch_records` and :func:`cross_generator`.
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from experiments.evaluation.metrics import sanitize_metric_component
from experiments.evaluation.curves import plot_heatmap
from experiments.runs import finished_training_runs, select_runs, tag
from experiments.runs import NoRunsFound
from experiments.tracking import resolve_tracking_uri
from experiments.tracking import announce_outputs, experiment_id, task_experiment_name

#: The ``protocol`` tags each protocol's runs carry (``logo``: train_on_one runs made before its rename).
PROTOCOL_TAGS = {"train_on_one": ("train_on_one", "logo"), "leave_one_out": ("leave_one_out",)}

#: Per-generator test metric written by ``train.py``: ``test/<generator>/<metric>``.
_PER_GENERATOR = re.compile(r"^test/([^/]+)/([^/]+)$")


# -- pure part -------------------------------------------------------------------------------------------
def build_matrix(records: Iterable[Mapping[str, Any]], metric: str = "auc") -> tuple[np.ndarray, list[str], list[str]]:
    """The train x test generator matrix of ``metric`` from flat records.

    Each record is a mapping with ``train`` (train generator), ``test`` (test
    generator) and the value under ``metric``; records without a finite value are
    ignored. Several records for one cell (seeds) are averaged. Rows are the
    sorted train generators; columns are the same names first (those tested, so
    the diagonal is train == test) followed by the sorted test-only generators
    (leave_one_out's rows ``all_but_<g>`` are never tested: its columns are the
    held-out generators). Cells without
    a record are NaN.

    Returns ``(matrix, row_names, col_names)`` with ``matrix[i, j]`` the score
    of the detector trained on ``row_names[i]`` tested on ``col_names[j]``.
    """
    records = list(records)
    rows = {str(record["train"]) for record in records}
    tests = {str(record["test"]) for record in records}
    cells = _finite_cells(records, metric)
    row_names = sorted(rows)
    col_names = [name for name in row_names if name in tests] + sorted(tests - rows)
    matrix = np.full((len(row_names), len(col_names)), np.nan)
    for i, train in enumerate(row_names):
        for j, test in enumerate(col_names):
            if cells.get((train, test)):
                matrix[i, j] = float(np.mean([float(r[metric]) for r in cells[(train, test)]]))
    return matrix, row_names, col_names


def _finite_cells(records: Iterable[Mapping[str, Any]], metric: str) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """The records with a finite ``metric``, grouped by cell: (train generator, test generator)."""
    cells: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        value = record.get(metric)
        if value is not None and math.isfinite(float(value)):
            cells[(str(record["train"]), str(record["test"]))].append(record)
    return cells


def summarize(matrix: np.ndarray, row_names: Sequence[str], col_names: Sequence[str]) -> dict[str, float]:
    """``diagonal_mean`` (train == test), ``off_diagonal_mean`` and ``off_diagonal_min`` (unseen generators: on
    average, and the worst one) over finite cells; NaN if none."""
    same = np.array([[r == c for c in col_names] for r in row_names], dtype=bool).reshape(matrix.shape)
    finite = np.isfinite(matrix)
    diagonal = matrix[same & finite]
    off = matrix[~same & finite]
    return {
        "diagonal_mean": float(diagonal.mean()) if diagonal.size else math.nan,
        "off_diagonal_mean": float(off.mean()) if off.size else math.nan,
        "off_diagonal_min": float(off.min()) if off.size else math.nan,
    }


def cell_intervals(records: Iterable[Mapping[str, Any]], metric: str, row_names: Sequence[str],
                   col_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap interval (``<metric>_ci_low``, ``<metric>_ci_high``, as training logs them per test generator)
    of each cell of :func:`build_matrix`'s matrix. A cell averaged over several seeds has no single interval
    (the seeds' spread is another quantity), so it, and a cell without bounds, is NaN."""
    cells = _finite_cells(records, metric)
    low = np.full((len(row_names), len(col_names)), np.nan)
    high = np.full_like(low, np.nan)
    for i, train in enumerate(row_names):
        for j, test in enumerate(col_names):
            cell = cells.get((train, test), [])
            if len(cell) == 1:
                low[i, j] = cell[0].get(f"{metric}_ci_low", math.nan)
                high[i, j] = cell[0].get(f"{metric}_ci_high", math.nan)
    return low, high


def records_from_run(model: str, train_generator: str, seed: str, metrics: Mapping[str, float],
                     metric_names: Sequence[str]) -> list[dict[str, Any]]:
    """One record per test generator from a run's ``test/<generator>/<metric>`` values and their bootstrap
    bounds ``test/<generator>/<metric>_ci_low`` / ``_ci_high``."""
    wanted = {f"{m}{suffix}" for m in metric_names for suffix in ("", "_ci_low", "_ci_high")}
    by_generator: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        match = _PER_GENERATOR.match(key)
        if match and match.group(2) in wanted:
            generator = match.group(1)
            record = by_generator.setdefault(
                generator, {"model": model, "seed": seed, "train": train_generator, "test": generator})
            record[match.group(2)] = float(value)
    return list(by_generator.values())


# -- MLflow ---------------------------------------------------------------------------------------------------
def fetch_records(client: mlflow.MlflowClient, experiment_name: str, metric_names: Sequence[str],
                  select: str = "latest", protocol: str = "train_on_one") -> list[dict[str, Any]]:
    """Records of the finished training runs of ``protocol`` in an experiment (see :func:`records_from_run`).

    ``select="latest"`` keeps the newest run per (model, train generator, seed).
    """
    if protocol not in PROTOCOL_TAGS:
        raise ValueError(f"task.protocol={protocol!r} is not one of {sorted(PROTOCOL_TAGS)}")
    runs = finished_training_runs(client, experiment_name,
                                  hint=f"Run the protocol first: python run.py -m experiment={protocol} "
                                       f"model=..., then python run.py task=cross_generator experiment={protocol}")
    runs = [run for run in runs if run.data.tags.get("protocol") in PROTOCOL_TAGS[protocol]]

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
    """Build, write, print and log the LOGO matrices of every model in ``cfg.task.experiment_name``."""
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
