"""The one query over the tracking store: the newest finished training run per key; sweeps as parent runs.

Report, OOD stress and the cross-generator matrices all compare "the latest run of each detector" (per
seed, per training generator, ...). They ask this module, so "latest" and "finished" mean the same
everywhere. (``task=runs``, ``experiments/tasks/list_runs.py``, lists every run of an experiment instead.)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Hashable, Iterable, Iterator

import mlflow
from hydra.experimental.callback import Callback
from mlflow.entities import Run
from omegaconf import DictConfig

from experiments.errors import UserError
from experiments.tracking import (
    PARENT_RUN_ENV,
    RUN_ID,
    create_run,
    end_run,
    experiment_id,
    resolve_tracking_uri,
    task_experiment_name,
)

log = logging.getLogger(__name__)

#: the filter of every query: training runs that ended normally.
FINISHED_TRAINING = "tags.task = 'train' and attributes.status = 'FINISHED'"
#: runs per page of a query (MLflow's ``search_runs`` returns at most this many with a token for the next page)
PAGE_SIZE = 1000


class ExperimentNotFound(LookupError, UserError):
    """The MLflow experiment does not exist in the store."""


class NoRunsFound(LookupError, UserError):
    """The experiment holds no run that a task can use."""


def store_of(client: mlflow.MlflowClient) -> str:
    """The tracking URI ``client`` reads (a SQLite store shows its file path)."""
    uri = str(getattr(client, "tracking_uri", "") or "")
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri


class NotASweep(LookupError, UserError):
    """``parent=`` does not name a run of the store."""


def sweep_experiment(client: mlflow.MlflowClient, parent: str) -> str:
    """The experiment of the sweep's parent run ``parent`` (``parent=<run id>`` of report and compare), where its
    children are."""
    parent = str(parent).strip()
    if not RUN_ID.match(parent):
        raise NotASweep(f"parent={parent} is not an MLflow run id (32 hex characters): pass the sweep's parent run id, "
                        f"printed when the sweep starts (`task=runs` lists the runs tagged task=sweep)")
    try:
        run = client.get_run(parent)
    except mlflow.exceptions.MlflowException:
        raise NotASweep(f"parent={parent}: no such run in the store {store_of(client)}") from None
    return client.get_experiment(run.info.experiment_id).name


def finished_training_runs(client: mlflow.MlflowClient, experiment_name: str, extra_filter: str = "",
                           hint: str = "", parent: str | None = None) -> list[Run]:
    """Finished ``task=train`` runs of ``experiment_name``, newest first (``extra_filter`` is ANDed to the query);
    with ``parent``, only the children of that sweep (tag ``mlflow.parentRunId``).

    Raises :class:`ExperimentNotFound` naming the experiments the store does have, and ``hint``.
    """
    if parent:
        sweep_experiment(client, parent)  # a clear error for an id that is no run
        extra_filter = " and ".join(f for f in (extra_filter, f"tags.mlflow.parentRunId = '{parent}'") if f)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = [e.name for e in client.search_experiments()]
        raise ExperimentNotFound(
            f"MLflow experiment '{experiment_name}' not found in the store {store_of(client)}; "
            f"experiments there: {names}"
            + (f". {hint}" if hint else "")
        )
    query = FINISHED_TRAINING + (f" and {extra_filter}" if extra_filter else "")
    return list(all_runs(client, [experiment.experiment_id], query))


def all_runs(client: mlflow.MlflowClient, experiment_ids: list[str], filter_string: str = "",
             order_by: tuple[str, ...] = ("attributes.start_time DESC",), page_size: int | None = None) -> Iterator[Run]:
    """Every run of the query, however many: page after page of ``page_size`` runs, following MLflow's
    ``page_token`` until the store has no next page (``search_runs`` alone stops at ``max_results``); None =
    :data:`PAGE_SIZE`."""
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, order_by=list(order_by),
                                  max_results=page_size or PAGE_SIZE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def newest_per_key(runs: Iterable[Run], key: Callable[[Run], Hashable | None]) -> list[Run]:
    """The first run of each ``key`` in ``runs`` (newest first, as :func:`finished_training_runs` orders them);
    runs whose key is None are left out."""
    kept: dict[Any, Run] = {}
    for run in runs:
        k = key(run)
        if k is not None and k not in kept:
            kept[k] = run
    return list(kept.values())


def select_runs(runs: list[Run], key: Callable[[Run], Hashable | None], select: str = "latest") -> list[Run]:
    """``select="latest"``: :func:`newest_per_key`; ``"all"``: every run with a key."""
    if select == "latest":
        return newest_per_key(runs, key)
    if select == "all":
        return [r for r in runs if key(r) is not None]
    raise ValueError(f"task.select must be 'latest' or 'all', got '{select}'")


def tag(run: Run, name: str, default: str = "?") -> str:
    return run.data.tags.get(name, default)


# -- sweeps ---------------------------------------------------------------------------------------------------
def prepare_store(logger_cfg: DictConfig) -> str | None:
    """Create a SQLite store's tables and the config's experiment now; return the experiment id.

    MLflow creates both lazily, on a run's first write; parallel jobs that all find a new store race to
    create its tables (``sqlite3.OperationalError: duplicate column name``) or the same experiment.
    Servers and other stores are left alone (``None``).
    """
    uri = resolve_tracking_uri(str(logger_cfg.tracking_uri))
    if not uri.startswith("sqlite:"):
        return None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    return experiment_id(client, str(logger_cfg.experiment_name), logger_cfg.get("artifact_location"))


class PrepareTrackingStore(Callback):
    """Hydra callback: before a multirun launches its jobs, prepare the tracking store once (:func:`prepare_store`),
    in the launching process, so jobs started side by side (``hydra/launcher=local_parallel``, slurm arrays)
    find the tables and the experiment in place."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        logger_cfg = config.get("logger")
        if not logger_cfg or "tracking_uri" not in logger_cfg:
            return
        try:
            prepare_store(logger_cfg)
        except Exception as err:  # noqa: BLE001 - the jobs will report a real tracking problem themselves
            log.warning("could not prepare the MLflow store before the sweep (%s)", err)


class SweepParentRun(Callback):
    """Hydra callback: a multirun sweep is one parent run (tagged ``task=sweep``, so no query of training runs
    takes it), made in the launching process, and every job's run its child (``mlflow.parentRunId``: the id
    travels in :data:`PARENT_RUN_ENV`). The parent goes to the experiment of the jobs (``logger.experiment_name``
    for training, ``logger.task_experiment_name`` otherwise) and is closed FINISHED, or FAILED when a child
    failed, at the sweep's end. ``task=report parent=<id>`` and ``task=compare parent=<id>`` read its children."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("logger") or "tracking_uri" not in config.logger or os.environ.get(PARENT_RUN_ENV):
            return  # no tracking, or a sweep inside a sweep: its jobs stay children of the outer parent
        name = config.logger.experiment_name if config.task.name == "train" else task_experiment_name(config)
        self.run_id = create_run(config, str(name), f"sweep-{config.task.name}", {"task": "sweep"})
        self.tracking_uri = resolve_tracking_uri(str(config.logger.tracking_uri))
        os.environ[PARENT_RUN_ENV] = self.run_id
        print(f"sweep: parent MLflow run {self.run_id} (task=report parent={self.run_id} reports its runs)")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        import mlflow

        os.environ.pop(PARENT_RUN_ENV, None)
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        run = client.get_run(self.run_id)
        children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{self.run_id}'")
        failed = any(child.info.status == "FAILED" for child in children)
        client.set_tag(self.run_id, "sweep_jobs", str(len(children)))
        end_run(client, self.run_id, "FAILED" if failed else "FINISHED")
        self.run_id = None
