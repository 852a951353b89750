"""MLflow tracking: one experiment per dataset, one run per training job.

The default store is an embedded SQLite file under the project
(``logger.tracking_uri``); point it at a server with
``logger.tracking_uri=http://host:5000``. Every run records the full resolved
config (as params and as ``config.yaml``), the seed, the git commit and the
metrics of every epoch.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping

from hydra.experimental.callback import Callback
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
    """The experiment an auxiliary task (evaluate, ood_stress, analyze, report, ...) logs into: ``<task>-<data>``.

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


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


class ResilientMLFlowLogger(MLFlowLogger):
    """An ``MLFlowLogger`` that keeps training going when the tracking server drops out mid-run.

    Failed metric writes are kept (up to ``max_buffer`` entries) and retried with the
    next successful write; the number of failures is recorded on the run
    (tag ``tracking_failures``) once the server answers again.
    """

    def __init__(self, *args, max_buffer: int = 100_000, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = 0
        self.max_buffer = max_buffer
        self._pending: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics, step=None) -> None:  # noqa: ANN001 - Lightning signature
        self._pending.append((dict(metrics), step))
        try:
            while self._pending:
                batch, batch_step = self._pending[0]
                super().log_metrics(batch, batch_step)
                self._pending.pop(0)
        except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
            self.failures += 1
            if self.failures == 1:
                log.warning("MLflow tracking failed (%s); training goes on and metrics are retried", err)
            del self._pending[: max(0, len(self._pending) - self.max_buffer)]
            return
        if self.failures:
            try:
                self.experiment.set_tag(self.run_id, "tracking_failures", str(self.failures))
            except Exception:  # noqa: BLE001
                pass

    def finalize(self, status: str = "success") -> None:
        try:
            super().finalize(status)
        except Exception as err:  # noqa: BLE001
            log.warning("could not finalise the MLflow run (%s)", err)


def mlflow_logger(
    experiment_name: str,
    run_name: str,
    tracking_uri: str,
    artifact_location: str | None = None,
    run_id: str | None = None,
    run_tags: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    task_experiment_name: str | None = None,
    register_as: str | None = None,
    log_mlflow_model: bool = True,
) -> MLFlowLogger:
    """The run's ``MLFlowLogger`` (``conf/logger/mlflow.yaml`` builds it by ``_target_``).

    Args:
        experiment_name, run_name: where the run goes and what it is called.
        tracking_uri: the store (a relative SQLite path is taken from the project root) or a server URL,
            which is checked before anything trains.
        artifact_location: where a new experiment keeps its artifacts.
        run_id: continue this run (``resume=``).
        run_tags: the tags every run carries (model, data, seed, task); the git commit is added.
        tags: the user's extra tags (``logger.tags.<name>=...``, presets).
        task_experiment_name: where the non-training tasks log (read by :func:`task_experiment_name`; unused here).
        register_as, log_mlflow_model: whether a training run logs its detector as an MLflow model and the
            registered model it becomes a version of (read by ``task=train``; unused here).
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_server(uri)
    all_tags = {
        **{str(k): str(v) for k, v in (run_tags or {}).items()},
        "mlflow.source.git.commit": git_commit(),
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }
    return ResilientMLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=uri,
        tags=all_tags,
        artifact_location=resolve_artifact_location(artifact_location),
        log_model=False,
        run_id=run_id,
    )


def build_logger(cfg: DictConfig) -> MLFlowLogger:
    """The run's ``MLFlowLogger`` from ``cfg.logger`` (:func:`mlflow_logger`)."""
    return instantiate(cfg.logger)


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
    name = str(logger_cfg.experiment_name)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=resolve_artifact_location(
        logger_cfg.get("artifact_location")))


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


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config flattened to ``a/b/c`` keys, as MLflow params (values cut to 500 chars)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            out[prefix] = str(node)[:500]

    walk(container, "")
    return out


def log_config(logger: MLFlowLogger, cfg: DictConfig) -> None:
    """Log the resolved config as params and as the ``config.yaml`` artifact."""
    params = {k: v for k, v in flat_params(cfg).items() if not k.startswith("hydra")}
    client, run_id = logger.experiment, logger.run_id
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i: i + 100])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        client.log_artifact(run_id, str(path))


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
