"""The one query over the tracking store: the newest finished training run per key.

Report, OOD stress and the cross-generator matrices all compare "the latest run of each detector" (per
seed, per training generator, ...). They ask this module, so "latest" and "finished" mean the same
everywhere. (``task=runs``, ``experiments/tasks/list_runs.py``, lists every run of an experiment instead.)
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Iterator

import mlflow
from mlflow.entities import Run

from experiments.errors import UserError

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


def finished_training_runs(client: mlflow.MlflowClient, experiment_name: str, extra_filter: str = "",
                           hint: str = "") -> list[Run]:
    """Finished ``task=train`` runs of ``experiment_name``, newest first (``extra_filter`` is ANDed to the query).

    Raises :class:`ExperimentNotFound` naming the experiments the store does have, and ``hint``.
    """
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
