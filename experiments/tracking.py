"""MLflow tracking: one experiment per dataset, one run per job, every run made by :func:`create_run`.

The default store is an embedded SQLite file under the project (``logger.tracking_uri``); point it at a server
with ``logger.tracking_uri=http://host:5000``. Every run records the resolved config (params and
``config.yaml``), the command-line overrides, the clean git commit and ``git_dirty``, the user's tags, and for
training the metrics of every epoch.

A server that drops out mid-run (MLflow's asynchronous logging, https://mlflow.org/docs/latest/tracking):

* metrics, params and tags logged through Lightning's ``MLFlowLogger`` (``logger.synchronous=false``) go to
  MLflow's queue and are sent by its worker threads, so the training loop never waits on the network;
* every request, queued or not (artifacts, the suite's tags, run creation and closing), retries within the
  bounded ``logger.http`` policy (:func:`apply_http_policy`; the defaults ride out an outage of about two
  minutes): a batch or artifact sent during a shorter outage arrives once the server is back; after a longer
  one MLflow logs the batch as failed (an artifact call raises) instead of stalling without end;
* :func:`end_run` waits for the queue to drain before it closes the run, so no queued metric is dropped.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from experiments.errors import UserError, instantiate
from experiments.process import project_root
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class TrackingUnavailable(RuntimeError, UserError):
    """The MLflow tracking server cannot be reached."""


#: the MLflow UI that ``make mlflow-ui`` serves on the project's store
UI_URL = "http://127.0.0.1:5000"


def resolve_tracking_uri(uri: str) -> str:
    """Make relative ``sqlite:///`` and plain-path stores absolute (relative to :func:`project_root`)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = (project_root() / uri[len("sqlite:///"):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if "://" not in uri:
        return (project_root() / Path(uri).expanduser()).resolve().as_uri()
    return uri


def task_experiment_name(cfg: DictConfig) -> str:
    """The experiment an auxiliary task (evaluate, ood_stress, analyze, report, ...) logs into,
    ``logger.task_experiment_name``: ``<task>-<the experiment it reads>`` (``task.experiment_name``, else
    ``logger.experiment_name``), e.g. ``compare-detectors-demo``.

    Training runs stay in ``logger.experiment_name`` (``detectors-<data>``), so a comparison of that
    experiment only ever sees training runs.
    """
    name = cfg.logger.get("task_experiment_name") if cfg.get("logger") is not None else None
    return str(name or f"{cfg.task.name}-{cfg.data.name}")


def experiment_id(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (artifacts under ``artifact_location``) when it does not exist yet."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=resolve_artifact_location(artifact_location))


def run_link(run_id: str, tracking_uri: str, experiment_id: str | None = None) -> str:
    """The MLflow UI address of a run: the server's own for an HTTP store, ``make mlflow-ui``'s otherwise."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_URL
    if experiment_id is None:
        try:
            import mlflow

            experiment_id = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a link without the experiment still finds the run
            return f"{base}/#/runs/{run_id}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def announce_outputs(output_dir: str | Path | None, run_ids: str | list[str] | None, tracking_uri: str) -> None:
    """End a task with two lines: where its outputs went, and its MLflow run id(s) with the UI link.

    Each run is tagged ``output_dir`` (when it has none yet), so ``task=runs`` can show the folder.
    """
    uri = resolve_tracking_uri(str(tracking_uri))
    ids = [run_ids] if isinstance(run_ids, str) else list(run_ids or [])
    print(f"outputs: {Path(output_dir).resolve() if output_dir else 'none written'}")
    if not ids:
        print("MLflow run: none (this task logs nothing to MLflow)")
        return
    links = []
    for run_id in ids:
        _tag_output_dir(run_id, uri, output_dir)
        links.append(f"{run_id} ({run_link(run_id, uri)})")
    store = "" if uri.startswith(("http://", "https://")) else f"; store {uri}, open it with `make mlflow-ui`"
    print(f"MLflow run{'s' if len(ids) > 1 else ''}: " + ", ".join(links) + store)


def _tag_output_dir(run_id: str, uri: str, output_dir: str | Path | None) -> None:
    if not output_dir:
        return
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        if "output_dir" not in client.get_run(run_id).data.tags:
            client.set_tag(run_id, "output_dir", str(Path(output_dir).resolve()))
    except Exception as err:  # noqa: BLE001 - the summary must not fail the finished task
        log.debug("could not tag run %s with its folder (%s)", run_id, err)


def resolve_artifact_location(location: str | None) -> str | None:
    """A plain artifact folder as an absolute ``file://`` URI (a relative one is taken from the project root)."""
    if location is None or "://" in location:
        return location
    path = (project_root() / Path(location).expanduser()).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except Exception as err:  # noqa: BLE001 - any network failure means the same thing here
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable ({err}). Start it (`make mlflow-server`) or run with the "
            f"local store: logger.tracking_uri=sqlite:///mlruns.db"
        ) from None


def check_store(tracking_uri: str, timeout: float = 2.0) -> str:
    """Fail fast, before anything is downloaded or built, when the store of ``logger.tracking_uri`` cannot be used:
    a server that does not answer within ``timeout`` seconds, or a local store that cannot be opened. Returns
    the resolved URI."""
    uri = resolve_tracking_uri(str(tracking_uri))
    if uri.startswith(("http://", "https://")):
        check_tracking_server(uri, timeout)
        return uri
    try:
        import mlflow

        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates a new SQLite store's tables
    except Exception as err:  # noqa: BLE001 - an unwritable folder, a corrupt file, a bad scheme: one message
        raise TrackingUnavailable(
            f"the MLflow store logger.tracking_uri={tracking_uri} ({uri}) cannot be opened ({err}). Point "
            f"logger.tracking_uri at a writable place, e.g. logger.tracking_uri=sqlite:///mlruns.db"
        ) from None
    return uri


# -- one way to make a run ------------------------------------------------------------------------------------
#: carries a sweep's parent run id to its jobs: the basic launcher runs them in this process, the joblib and
#: submitit launchers in processes that inherit the environment (:class:`SweepParentRun` sets it)
PARENT_RUN_ENV = "SUITE_PARENT_RUN_ID"
#: the tag of a run's command-line overrides (MLflow keeps tag values up to 8000 characters)
OVERRIDES_TAG = "overrides"
MAX_TAG_LENGTH = 8000
#: ``logger.http.<name>`` -> MLflow's variable (``mlflow.environment_variables``) that bounds its HTTP retries
HTTP_ENV = {"max_retries": "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "backoff_factor": "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
            "backoff_jitter": "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "timeout": "MLFLOW_HTTP_REQUEST_TIMEOUT"}
#: the running system-metrics monitors, by run id (stopped by :func:`end_run`)
_MONITORS: dict[str, Any] = {}


class UnknownTrackingSetting(ValueError, UserError):
    """A ``logger.*`` setting the suite does not know."""


class SystemMetricsUnavailable(RuntimeError, UserError):
    """``logger.system_metrics=true`` without the packages MLflow's monitor needs."""


@dataclass(frozen=True)
class GitState:
    """The checkout the code runs from: ``commit`` (a clean hash, or ``unknown``) and whether it has uncommitted
    changes to tracked files (``dirty``; None outside a git checkout)."""

    commit: str
    dirty: bool | None


def git_state() -> GitState:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout, or no git
        return GitState("unknown", None)
    return GitState(commit, bool(status))


def apply_http_policy(http: Mapping[str, Any] | None) -> None:
    """Bound MLflow's HTTP retries for this process (``logger.http``: ``max_retries``, ``backoff_factor``,
    ``backoff_jitter``, ``timeout``; None keeps MLflow's default or the variable already set).

    MLflow reads these variables at every request (urllib3's ``Retry``: the n-th retry waits
    ``backoff_factor * 2**(n-1)`` s plus up to ``backoff_jitter``), so the policy holds for every client.
    """
    for key, value in (http or {}).items():
        if key not in HTTP_ENV:
            raise UnknownTrackingSetting(f"logger.http.{key} is not a setting; use one of {sorted(HTTP_ENV)}")
        if value is not None:
            os.environ[HTTP_ENV[key]] = str(value)


def command_overrides(cfg: DictConfig | None = None) -> list[str]:
    """The command line's overrides (Hydra's ``overrides.task``) of the running job, else of ``cfg.hydra``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return [str(o) for o in HydraConfig.get().overrides.task]
    hydra = cfg.get("hydra") if cfg is not None else None
    return [str(o) for o in hydra.overrides.task] if hydra is not None and "overrides" in hydra else []


def source_tags(cfg: DictConfig | None = None, user_tags: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The tags of every run: the clean git commit (``mlflow.source.git.commit``), ``git_dirty`` (true, false or
    unknown), the command-line ``overrides``, the sweep's parent run (``mlflow.parentRunId``, from
    :data:`PARENT_RUN_ENV`) and, last, the user's tags (``logger.tags``)."""
    git = git_state()
    tags = {"mlflow.source.git.commit": git.commit,
            "git_dirty": "unknown" if git.dirty is None else str(git.dirty).lower(),
            OVERRIDES_TAG: (" ".join(command_overrides(cfg)) or "none")[:MAX_TAG_LENGTH]}
    if os.environ.get(PARENT_RUN_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
    tags.update({str(k): str(v) for k, v in (user_tags or {}).items()})
    return tags


def wants_system_metrics(setting: bool | None, accelerator: str | None) -> bool:
    """``logger.system_metrics``: true or false as set; null (auto) is true on a CUDA trainer."""
    if setting is not None or str(accelerator) in ("gpu", "cuda"):
        return setting is None or bool(setting)
    import torch

    return str(accelerator) == "auto" and torch.cuda.is_available()


def _system_metrics_monitor(required: bool):
    """MLflow's ``SystemMetricsMonitor`` class, or None (a warning) when psutil is missing and it was not asked for."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as err:
        message = (f"system metrics need psutil, and nvidia-ml-py for GPU metrics ({err}): pip install psutil "
                   f"nvidia-ml-py, or run with logger.system_metrics=false")
        if required:
            raise SystemMetricsUnavailable(message) from None
        log.warning(message)
        return None
    return SystemMetricsMonitor


def start_system_metrics(run_id: str, tracking_uri: str, interval: float = 10.0, required: bool = True,
                         resume: bool = False) -> None:
    """Record ``system/*`` metrics (CPU, memory, disk, network, GPU) of the run with MLflow's system metrics
    monitor every ``interval`` s (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it) until
    :func:`end_run`."""
    monitor_class = _system_metrics_monitor(required)
    if monitor_class is None or run_id in _MONITORS:
        return
    monitor = monitor_class(run_id, sampling_interval=float(interval), resume_logging=resume,
                            tracking_uri=tracking_uri)
    monitor.start()
    _MONITORS[run_id] = monitor


def create_run(cfg: DictConfig, experiment_name: str, run_name: str, tags: Mapping[str, Any] | None = None,
               system_metrics: bool = False) -> str:
    """Every task's MLflow run, made here: returns its id.

    The run goes to ``experiment_name`` (created, artifacts under ``logger.artifact_location``) with the task's
    ``tags``, then :func:`source_tags` (commit, ``git_dirty``, ``overrides``, parent, ``logger.tags``); the
    resolved config and the overrides are logged by :func:`log_config`. ``logger.http`` bounds the retries
    first (:func:`apply_http_policy`); ``system_metrics`` starts :func:`start_system_metrics`. Lightning tasks
    continue the run with :func:`build_logger`; every task closes it with :func:`end_run`.
    """
    logger_cfg = cfg.logger
    apply_http_policy(logger_cfg.get("http"))
    uri = resolve_tracking_uri(str(logger_cfg.tracking_uri))
    check_tracking_server(uri)
    if system_metrics:
        _system_metrics_monitor(required=logger_cfg.get("system_metrics") is not None)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = experiment_id(client, experiment_name, logger_cfg.get("artifact_location"))
    all_tags = {**{str(k): str(v) for k, v in (tags or {}).items()}, **source_tags(cfg, logger_cfg.get("tags"))}
    run_id = client.create_run(exp, run_name=run_name, tags=all_tags).info.run_id
    log_config(client, run_id, cfg)
    if system_metrics:
        start_system_metrics(run_id, uri, logger_cfg.get("system_metrics_interval", 10.0),
                             required=logger_cfg.get("system_metrics") is not None)
    return run_id


def end_run(client: Any, run_id: str, status: str = "FINISHED") -> None:
    """Close a run: stop its system-metrics monitor, wait for MLflow's asynchronous queue to drain (each
    queued batch retried within ``logger.http``), then set ``status``."""
    monitor = _MONITORS.pop(run_id, None)
    if monitor is not None:
        monitor.finish()
    client.set_terminated(run_id, status)  # MLflow shuts its async logging down, draining the queue, first


def mlflow_logger(experiment_name: str, run_name: str, tracking_uri: str, artifact_location: str | None = None,
                  run_id: str | None = None, synchronous: bool = False, http: Mapping[str, Any] | None = None,
                  **_: Any) -> MLFlowLogger:
    """Lightning's ``MLFlowLogger`` on the run ``run_id`` (``conf/logger/mlflow.yaml`` names it by
    ``_target_``; :func:`build_logger` creates the run first). ``synchronous=False``: metrics, params and tags
    go through MLflow's asynchronous queue. The other ``logger.*`` keys are read by :func:`create_run`."""
    apply_http_policy(http)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_server(uri)
    return MLFlowLogger(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri,
                        artifact_location=resolve_artifact_location(artifact_location), log_model=False,
                        run_id=run_id, synchronous=bool(synchronous))


def build_logger(cfg: DictConfig) -> MLFlowLogger:
    """The run's ``MLFlowLogger``: a new run of ``logger.experiment_name`` made by :func:`create_run` (on rank 0
    only; the other ranks of a DDP job log nothing), or the run ``logger.run_id`` continued."""
    from lightning.pytorch.utilities import rank_zero_only

    logger_cfg = cfg.logger
    system = wants_system_metrics(logger_cfg.get("system_metrics"), (cfg.get("trainer") or {}).get("accelerator"))
    run_id = logger_cfg.get("run_id")
    if rank_zero_only.rank == 0 and run_id is None:
        run_id = create_run(cfg, str(logger_cfg.experiment_name), str(logger_cfg.run_name),
                            logger_cfg.get("run_tags"), system_metrics=system)
    elif rank_zero_only.rank == 0 and system:
        start_system_metrics(str(run_id), resolve_tracking_uri(str(logger_cfg.tracking_uri)),
                             logger_cfg.get("system_metrics_interval", 10.0),
                             required=logger_cfg.get("system_metrics") is not None, resume=True)
    return instantiate(logger_cfg, run_id=run_id)


def resolved(cfg: DictConfig) -> Any:
    """``cfg`` as plain containers, resolved; unresolved where it cannot be (a sweep's config before its jobs have
    run folders: ``${hydra:runtime.output_dir}`` stays as written)."""
    from omegaconf.errors import InterpolationResolutionError

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError:
        return OmegaConf.to_container(cfg, resolve=False)


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config flattened to ``a/b/c`` keys, as MLflow params (values cut to 500 chars)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            out[prefix] = str(node)[:500]

    walk(resolved(cfg), "")
    return out


def log_config(client: Any, run_id: str, cfg: DictConfig) -> None:
    """Log the resolved config (without ``hydra``) as params and as ``config.yaml``, and the command-line overrides
    as ``overrides.yaml`` (Hydra's ``.hydra/overrides.yaml`` of the job when there is one)."""
    from mlflow.entities import Param

    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    items = [Param(k, v) for k, v in flat_params(plain).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i: i + 100])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved(plain))))
        client.log_artifact(run_id, str(path))
        client.log_artifact(run_id, str(_overrides_file(cfg, Path(tmp))))


def _overrides_file(cfg: DictConfig, folder: Path) -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        if hydra.output_subdir is not None:
            own = Path(hydra.runtime.output_dir) / str(hydra.output_subdir) / "overrides.yaml"
            if own.is_file():
                return own
    path = folder / "overrides.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(command_overrides(cfg))))
    return path


def download_run_artifact(client: Any, run_id: str, path: str) -> Path:
    """Download one artifact of an MLflow run into ``<cache>/mlflow-artifacts/<run_id>/`` and return its local path.

    MLflow's default destination is a new temporary folder per call, never removed: every ``task=evaluate``,
    ``ood_stress`` or ``spectral-detect`` by run id left a copy of the weights in the system's temp folder. One
    folder per run, overwritten on each download, keeps a single copy.
    """
    from experiments.process import default_cache_dir

    destination = default_cache_dir() / "mlflow-artifacts" / run_id
    destination.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(destination)))


def log_artifact(logger: MLFlowLogger, path: str | Path, artifact_path: str | None = None) -> None:
    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path)


def log_metrics(logger: MLFlowLogger, metrics: dict[str, float], step: int | None = None) -> None:
    clean = {k: float(v) for k, v in metrics.items() if v == v}  # drop NaN
    if clean:
        logger.log_metrics(clean, step=step)


#: an MLflow run id: 32 lowercase hex characters
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def mlflow_client(tracking_uri: str | None = None):
    """An ``mlflow.MlflowClient`` on ``tracking_uri`` (default the project's ``sqlite:///mlruns.db``), made
    absolute by :func:`resolve_tracking_uri`."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri or "sqlite:///mlruns.db"))
