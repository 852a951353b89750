"""``task=cross_generator``: the cross-generator matrices of two protocols, read by their ``protocol`` tag.

``protocol=train_on_one`` (GenImage's: train on one generator, test on all;
``experiment=train_on_one``) and
``protocol=leave_one_out`` (train on all generators but one, test on the
held-out one; ``experiment=leave_one_out``, runs tagged ``train_generator=all_but_<generator>``) and
``protocol=chronological`` (AI-GenBench, Pellegrini et al. 2025: train on the first k generators of a release
order, test on each later window; ``experiment=chronological``, runs tagged ``train_generator=upto_<generator>``,
``generator_order`` and ``chronological_k``).

The runs come from the protocol's preset (one training run per
model and train generator, tagged ``protocol`` and ``train_generator``;
``train.py`` logs ``test/<generator>/auc`` and ``test/<generator>/accuracy``).
Train on one: for each model and metric this task builds the generator x
generator matrix (rows = train generator, columns = test generator), writes a
heatmap PNG and a CSV, and reports the diagonal mean (in-distribution) and the
off-diagonal mean and minimum (unseen generators). Leave one out: for each metric
one table with a row per held-out generator and a column per detector (the
held-out score with its bootstrap interval; ``held_out_<metric>.{csv,png}``), and
each detector's mean and worst held-out score. Chronological: for each metric one table with a row per
(training horizon, test window of ``task.window`` generators) and a column per detector (``chronological_<metric>
.{csv,png}``), and each detector's mean, worst and next-window score. Tables fold to one row per cell on
a console too narrow for them. Everything is logged to MLflow in a run tagged
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

from experiments.data.chronology import TRAIN_TAG_PREFIX
from experiments.evaluation.curves import plot_heatmap
from experiments.evaluation.console_tables import print_fitted
from experiments.evaluation.generator_matrix import (
    build_matrix,
    cell_intervals,
    held_out_summary,
    held_out_table,
    chronological_summary,
    chronological_table,
    records_from_run,
    summarize,
    write_matrix_csv,
)
from experiments.evaluation.metrics import sanitize_metric_component
from experiments.runs import finished_training_runs, select_runs, tag
from experiments.runs import NoRunsFound
from experiments.tracking import resolve_tracking_uri
from experiments.tracking import announce_outputs, create_run, end_run, task_experiment_name

#: The protocols, as the ``protocol`` tag of their training runs spells them.
PROTOCOLS = ("train_on_one", "leave_one_out", "chronological")

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

    def key(run) -> tuple[str, ...] | None:
        if "train_generator" not in run.data.tags:
            return None
        if protocol == "chronological" and not {"generator_order", "chronological_k"} <= set(run.data.tags):
            return None
        return (tag(run, "model"), tag(run, "train_generator"), tag(run, "seed"),
                run.data.tags.get("generator_order", ""))

    records: list[dict[str, Any]] = []
    for run in select_runs(runs, key, select):
        model, train_generator, seed, order = key(run)
        train = sanitize_metric_component(train_generator)  # as the metric names spell it
        found = records_from_run(model, train, seed, run.data.metrics, metric_names)
        if protocol == "chronological":  # the release order and k, in the metric names' spelling
            names = ",".join(sanitize_metric_component(g) for g in order.split(","))
            for record in found:
                record.update(order=names, k=int(run.data.tags["chronological_k"]))
        records += found
    return records


# -- the task ------------------------------------------------------------------------------------------------
def _write_rows_csv(path: Path, key_header: Sequence[str], keys: Sequence[Sequence[str]], models: Sequence[str],
                    values: np.ndarray, low: np.ndarray, high: np.ndarray) -> Path:
    """A row per key (``key_header`` columns), then each model's value and its interval (``<model>``,
    ``<model>_ci_low``, ``<model>_ci_high``): the leave-one-out and chronological tables."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*key_header, *(f"{m}{s}" for m in models for s in ("", "_ci_low", "_ci_high"))])
        for i, key in enumerate(keys):
            writer.writerow([*key, *(v for j in range(len(models)) for v in (values[i, j], low[i, j], high[i, j]))])
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

    chronological: dict = {}
    if protocol == "chronological":
        chronological, summary, artifacts = _chronological_tables(by_model, metric_names, out_dir,
                                                                  int(cfg.task.get("window", 1)))
        matrices, intervals, held_out = {}, {}, {}
    elif protocol == "leave_one_out":
        held_out, summary, artifacts = _held_out_tables(by_model, metric_names, out_dir)
        matrices: dict = {}
        intervals: dict = {}
    else:
        matrices, intervals, summary, artifacts = _matrices(by_model, metric_names, out_dir)
        held_out = {}
    summary_csv = out_dir / "summary.csv"
    with summary_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        names = list(next(iter(summary.values())))
        writer.writerow(["model", "metric", *names])
        for (model, metric), values in summary.items():
            writer.writerow([model, metric, *(values[name] for name in names)])
    artifacts.append(summary_csv)
    if matrices:
        artifacts.append(_write_cells_csv(out_dir / "cells.csv", matrices, intervals))

    run_id = _log_run(cfg, client, experiment, summary, artifacts, protocol)
    console = Console()
    confidence = float(cfg.stats.confidence)
    if chronological:
        _print_chronological(console, experiment, chronological, summary, confidence)
    elif held_out:
        _print_held_out(console, experiment, held_out, summary, confidence)
    else:
        _print_summary(console, experiment, matrices, intervals, summary, confidence)
    announce_outputs(out_dir, run_id, uri)
    return {"matrices": matrices, "intervals": intervals, "held_out": held_out, "chronological": chronological,
            "summary": summary,
            "records": records, "run_id": run_id, "out_dir": out_dir, "artifacts": artifacts}


def _matrices(by_model: Mapping[str, list], metric_names: Sequence[str], out_dir: Path):
    """Train on one: per model and metric the train x test matrix, its cell intervals, its summary, and a
    heatmap and CSV of it."""
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
            artifacts.append(write_matrix_csv(out_dir / f"{stem}.csv", matrix, rows, cols))
    return matrices, intervals, summary, artifacts


def _held_out_tables(by_model: Mapping[str, list], metric_names: Sequence[str], out_dir: Path):
    """Leave one out: per metric the held-out generator x detector table (:func:`held_out_table`), per model
    and metric its mean and worst held-out score, and a heatmap and CSV (``held_out_<metric>``) per metric."""
    tables: dict[str, tuple] = {}
    summary: dict[tuple[str, str], dict[str, float]] = {}
    artifacts: list[Path] = []
    for metric in metric_names:
        values, low, high, generators, models = held_out_table(by_model, metric)
        tables[metric] = (values, low, high, generators, models)
        for j, model in enumerate(models):
            summary[(model, metric)] = held_out_summary(values[:, j])
        artifacts.append(plot_heatmap(values, generators, models, out_dir / f"held_out_{metric}.png",
                                      title=f"leave one out: held-out {metric}", fmt=".3f", vmin=0.0, vmax=1.0,
                                      xlabel="detector", ylabel="held-out generator"))
        artifacts.append(_write_rows_csv(out_dir / f"held_out_{metric}.csv", ["held_out"],
                                         [[g] for g in generators], models, values, low, high))
    summary = dict(sorted(summary.items()))
    return tables, summary, artifacts


def _chronological_tables(by_model: Mapping[str, list], metric_names: Sequence[str], out_dir: Path, window: int):
    """Chronological: per metric the (horizon, window) x detector table (:func:`chronological_table`), per model
    and metric its summary (:func:`chronological_summary`), and a heatmap and CSV (``chronological_<metric>``)."""
    tables: dict[str, tuple] = {}
    summary: dict[tuple[str, str], dict[str, float]] = {}
    artifacts: list[Path] = []
    for metric in metric_names:
        values, low, high, rows, models = chronological_table(by_model, metric, window)
        tables[metric] = (values, low, high, rows, models)
        first = np.array([all(r[0] != train for r in rows[:i]) for i, (train, _) in enumerate(rows)], dtype=bool)
        for j, model in enumerate(models):
            summary[(model, metric)] = chronological_summary(values[:, j], first)
        labels = [f"{_horizon(train)} -> {test}" for train, test in rows]
        artifacts.append(plot_heatmap(values, labels, models, out_dir / f"chronological_{metric}.png",
                                      title=f"chronological: {metric} on later generators", fmt=".3f", vmin=0.0,
                                      vmax=1.0, xlabel="detector", ylabel="trained up to -> test window"))
        artifacts.append(_write_rows_csv(out_dir / f"chronological_{metric}.csv", ["trained_up_to", "window"],
                                         [[_horizon(train), test] for train, test in rows], models, values, low,
                                         high))
    return tables, dict(sorted(summary.items())), artifacts


def _horizon(train: str) -> str:
    """The newest generator of a chronological run's ``train_generator`` tag (``upto_<generator>``)."""
    return train.removeprefix(TRAIN_TAG_PREFIX)


def _log_run(cfg: DictConfig, client: mlflow.MlflowClient, experiment: str,
             summary: Mapping[tuple[str, str], Mapping[str, float]], artifacts: Sequence[Path],
             protocol: str = "train_on_one") -> str:
    """Log the summary and files to a new run (:func:`~experiments.tracking.create_run`) of
    ``cross_generator-<experiment>``, apart from training."""
    run_id = create_run(cfg, task_experiment_name(cfg), "cross_generator",
                        {"task": "cross_generator", "protocol": protocol, "reported_experiment": experiment})
    now = int(time.time() * 1000)
    metrics = [Metric(f"cross_generator/{sanitize_metric_component(model)}/{metric}/{name}", value, now, 0)
               for (model, metric), values in summary.items() for name, value in values.items()
               if not math.isnan(value)]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    for path in artifacts:
        client.log_artifact(run_id, str(path), "cross_generator")
    end_run(client, run_id)
    return run_id


def _cell_text(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.3f}, {high:.3f}]"


def _value_text(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _print_summary(console: Console, experiment: str, matrices: Mapping, intervals: Mapping, summary: Mapping,
                   confidence: float = 0.95) -> None:
    """Train on one: each model's matrix (rows: trained on, columns: tested on), then the summary; each folds
    to one row per cell when the console is too narrow for it."""
    for (model, metric), (matrix, rows, cols) in matrices.items():
        low, high = intervals[(model, metric)]
        body = [[name, *(_cell_text(matrix[i, j], low[i, j], high[i, j]) for j in range(len(cols)))]
                for i, name in enumerate(rows)]
        print_fitted(console, f"{experiment}: {model} {metric} (rows: trained on, columns: tested on; "
                              f"[{confidence:.0%} bootstrap interval over that generator's test images])",
                     ["train \\ test", *cols], body, column_label="tested on")
    body = [[model, metric, *(_value_text(values[k]) for k in ("diagonal_mean", "off_diagonal_mean",
                                                                "off_diagonal_min"))]
            for (model, metric), values in summary.items()]
    print_fitted(console, f"{experiment}: cross-generator summary",
                 ["model", "metric", "diagonal mean", "off-diagonal mean", "worst unseen"], body, keys=2,
                 column_label="statistic")


def _print_held_out(console: Console, experiment: str, tables: Mapping, summary: Mapping,
                    confidence: float = 0.95) -> None:
    """Leave one out: per metric one row per held-out generator and one column per detector, then each
    detector's mean and worst held-out score."""
    for metric, (values, low, high, generators, models) in tables.items():
        body = [[generator, *(_cell_text(values[i, j], low[i, j], high[i, j]) for j in range(len(models)))]
                for i, generator in enumerate(generators)]
        print_fitted(console, f"{experiment}: held-out {metric} (trained on every other generator; "
                              f"[{confidence:.0%} bootstrap interval over the held-out generator's test images])",
                     ["held out", *models], body, column_label="detector")
    body = [[model, metric, _value_text(values["held_out_mean"]), _value_text(values["held_out_min"])]
            for (model, metric), values in summary.items()]
    print_fitted(console, f"{experiment}: leave-one-out summary",
                 ["model", "metric", "held-out mean", "worst held out"], body, keys=2, column_label="statistic")


def _print_chronological(console: Console, experiment: str, tables: Mapping, summary: Mapping,
                         confidence: float = 0.95) -> None:
    """Chronological: per metric one row per (training horizon, test window) and one column per detector, then
    each detector's mean, worst and next-window score."""
    for metric, (values, low, high, rows, models) in tables.items():
        body = [[_horizon(train), test, *(_cell_text(values[i, j], low[i, j], high[i, j])
                                          for j in range(len(models)))]
                for i, (train, test) in enumerate(rows)]
        print_fitted(console, f"{experiment}: {metric} on generators released later (trained on every generator "
                              f"up to the first column; [{confidence:.0%} bootstrap interval over the window's test "
                              f"images])", ["trained up to", "test window", *models], body, keys=2,
                     column_label="detector")
    body = [[model, metric, *(_value_text(values[k]) for k in ("next_window_mean", "window_mean", "window_min"))]
            for (model, metric), values in summary.items()]
    print_fitted(console, f"{experiment}: chronological summary",
                 ["model", "metric", "next window", "window mean", "worst window"], body, keys=2,
                 column_label="statistic")
