"""``task=runs``: list the runs of one MLflow experiment, so each can be passed on by id or folder.

    python run.py task=runs [experiment=demo | data=... | task.experiment_name=evaluate-demo]

One row per run, newest first: id, task, model, data, status, start date, the headline metric
(``task.metric``, default ``test/auc``) and the run folder (tag ``output_dir``). A run id or a folder goes
to ``task=evaluate ckpt=...``, ``task=ood_stress ckpt=...`` or ``spectral-detect <ref> <images>``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import mlflow
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from experiments.runs import ExperimentNotFound, store_of
from experiments.tracking import announce_outputs, resolve_tracking_uri


@dataclass
class RunListing:
    """One line of the listing."""

    run_id: str
    task: str
    model: str
    data: str
    status: str
    date: str
    metric: float | None
    folder: str


def recent_runs(client: mlflow.MlflowClient, experiment_name: str, metric: str = "test/auc",
                limit: int = 50) -> list[RunListing]:
    """The newest ``limit`` runs of ``experiment_name``; raises :class:`ExperimentNotFound` naming the store."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ExperimentNotFound(
            f"MLflow experiment '{experiment_name}' not found in the store {store_of(client)}; experiments there: "
            f"{names}. Pick one with task.experiment_name=<name> (training runs: detectors-<data>)")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              max_results=int(limit))
    return [RunListing(
        run_id=r.info.run_id, task=r.data.tags.get("task", "?"), model=r.data.tags.get("model", "-"),
        data=r.data.tags.get("data", "-"), status=r.info.status,
        date=dt.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M"),
        metric=r.data.metrics.get(metric), folder=r.data.tags.get("output_dir", "-"),
    ) for r in runs]


def format_listing(rows: list[RunListing], title: str, metric: str) -> Table:
    """The listing as a rich table (full run ids and folders: they are meant to be copied)."""
    table = Table(title=title)
    for header in ("run id", "task", "model", "data", "status", "date", metric, "folder"):
        table.add_column(header, justify="right" if header == metric else "left", overflow="fold")
    for row in rows:
        value = "n/a" if row.metric is None else f"{row.metric:.4f}"
        table.add_row(row.run_id, row.task, row.model, row.data, row.status, row.date, value, row.folder)
    return table


def list_runs(cfg: DictConfig) -> list[RunListing]:
    """Print the runs of ``cfg.task.experiment_name`` and return them."""
    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = str(cfg.task.experiment_name)
    metric = str(cfg.task.get("metric", "test/auc"))
    rows = recent_runs(client, experiment, metric, int(cfg.task.get("limit", 50)))
    Console(width=250).print(format_listing(rows, f"{experiment}: {len(rows)} run(s), newest first", metric))
    print("pass a run id or folder on: task=evaluate ckpt=<id | folder>, task=ood_stress ckpt=<id | folder>, "
          "spectral-detect <id | folder> <images>")
    announce_outputs(None, None, uri)
    return rows
