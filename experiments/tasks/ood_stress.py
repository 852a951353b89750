"""``task=ood_stress``: trained detectors under the perturbation grid of ``cfg.ood``.

For every detector and every (perturbation, strength) of the grid, the test split of ``cfg.data`` is scored
(:mod:`experiments.inference.stress`) in deployment order (``ood.order: before_preprocessing``, the default:
each decoded file is perturbed at its native size, then the detector's own preprocessing, ``data.equalizer``,
``data.resize_size`` and ``data.crop_size`` of its saved config, runs on it) or on the preprocessed batches
(``ood.order: after_preprocessing``). The grid is the ``_target_`` entries of ``cfg.ood.perturbations``
(:mod:`experiments.data.perturbations`).

Each image is scored on the views of ``eval.views`` (``auto``: one centre crop, or a grid at native size for a
spectral detector on images more than twice the crop; :mod:`experiments.inference.tiling`) pooled by
``eval.pooling``; the run records them (params ``stress/views``, ``stress/views_used``, ``stress/pooling``).

Outputs:

* MLflow: one new run per detector, tagged ``task=ood_stress``,
  ``evaluated_run=<source run id or path>`` and ``model``, in the experiment
  ``ood_stress-<training experiment>`` (``logger.task_experiment_name``), with the
  metrics ``ood/<perturbation>/<strength>/{auc,ap,accuracy,tpr_at_op,fpr_at_op}`` (the last two at the run's
  operating-point threshold);
* ``<paths.report_dir>/ood_stress/``: ``robustness_<perturbation>.png`` (AUROC
  versus strength, one line per detector), ``ood_auroc.md`` / ``ood_auroc.csv``
  (rows = detector, columns = ``<perturbation>/<strength>`` AUROC) and
  ``ood_metrics.csv`` (long format, every metric); these are logged to every
  detector run under ``ood_stress/`` and the table is printed. With laundering chains (``ood=laundering``,
  :mod:`experiments.data.laundering`): ``severity_<chain>.png`` (AUROC and TPR at the operating point per
  level) and ``laundering_severity.md`` / ``.csv``, the severity table that is printed.

``ood.too_small`` (``skip``, the default, or ``upscale``): what happens to a perturbed image that became
smaller than a detector's crop; the counts per grid point are printed and in ``ood_metrics.csv``.

Which detectors: ``ckpt=<run id | run folder | weights file | models:/<name>/<version> | runs:/<id>/model>``
or a list ``ckpt=[id1,id2]``; with the default ``ckpt=null`` the latest finished
``task=train`` run of each model of ``task.models`` in the experiment
``cfg.logger.experiment_name``. When there is none, the task stops with the command that trains them
(:class:`~experiments.runs.NoRunsFound`); on the demo data that is ``make demo``'s
``python run.py -m experiment=demo model=<task.models joined by ','>``, which ``make ood-stress`` runs first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console

from experiments.data.perturbations import Perturbation, perturbation_grid, perturbation_order
from experiments.errors import instantiate
from experiments.inference.device import resolve_device
from experiments.inference.loading import load_detector, resolve_reference
from experiments.inference.stress import StressedDetector, deduplicate_labels, evaluate_detectors
from experiments.inference.tiling import Views, parse_pooling, parse_views
from experiments.inference.stress_tables import (ood_metric_items, print_severity_table, print_tables, write_curves,
                                                 write_severity_table, write_tables)
from experiments.runs import ExperimentNotFound, NoRunsFound, finished_training_runs, newest_per_key
from experiments.tracking import RUN_ID, announce_outputs, create_run, end_run, mlflow_client, task_experiment_name

log = logging.getLogger(__name__)


def ood_grid(cfg_ood: DictConfig) -> list[Perturbation]:
    """The grid of an ``ood`` config: each entry of ``perturbations`` built by its ``_target_``."""
    kinds = {name: instantiate(node, _convert_="all") for name, node in cfg_ood.perturbations.items()}
    return perturbation_grid(kinds)


# -- which detectors ---------------------------------------------------------------------------------
def as_ref_list(ckpt: Any) -> list[str]:
    """``ckpt`` as a list of references: None -> [], ``"a,b"`` -> ["a", "b"], a list stays a list."""
    if ckpt is None:
        return []
    if isinstance(ckpt, (list, tuple, ListConfig)):
        return [str(c).strip() for c in ckpt if str(c).strip()]
    return [part.strip() for part in str(ckpt).split(",") if part.strip()]


def latest_train_runs(client: mlflow.MlflowClient, experiment_name: str, models: Sequence[str] | None) -> list:
    """The newest finished ``task=train`` run of each model (restricted to ``models`` unless None), by model name."""
    try:
        runs = finished_training_runs(client, experiment_name)
    except ExperimentNotFound:
        return []

    def model_of(run) -> str | None:
        model = run.data.tags.get("model")
        return model if model and (models is None or model in models) else None

    return sorted(newest_per_key(runs, model_of), key=model_of)


def missing_runs(cfg: DictConfig, models: Sequence[str]) -> NoRunsFound:
    """The error naming the command that trains ``models`` on ``cfg.data``."""
    names = ",".join(models)
    where = f"MLflow experiment '{cfg.logger.experiment_name}'"
    if cfg.data.name == "demo":
        return NoRunsFound(f"no finished training runs of {list(models)} in {where}. Train them first with "
                           f"`python run.py -m experiment=demo model={names}` (or `make ood-stress`, which does), "
                           "or pass ckpt=<run id | run folder>")
    return NoRunsFound(f"no finished training runs of {list(models)} in {where}. Train them first, e.g. "
                       f"`python run.py -m data={cfg.data.name} data.root=... model={names}`, "
                       "or pass ckpt=<run id | run folder>")


def resolve_detectors(cfg: DictConfig, client: mlflow.MlflowClient, tracking_uri: str) -> list[StressedDetector]:
    """Load the detectors named by ``cfg.ckpt``, or the latest training run of each model of ``task.models``."""
    refs = as_ref_list(cfg.get("ckpt"))
    if refs:
        refs = [str(resolve_reference(ref, tracking_uri)) for ref in refs]  # a model URI -> its training run
        found = [(ref, None) if RUN_ID.match(ref) else (str(Path(ref).resolve()), None) for ref in refs]
    else:
        models = list(cfg.task.models) if cfg.task.get("models") else None
        runs = latest_train_runs(client, cfg.logger.experiment_name, models)
        if not runs:
            raise missing_runs(cfg, models or [cfg.model.name])
        found = [(r.info.run_id, r.info.experiment_id) for r in runs]
    device = resolve_device(cfg.task.get("device", "auto"))
    detectors = []
    for ref, experiment_id in found:
        loaded = load_detector(ref, tracking_uri, device=device)
        if experiment_id is None and RUN_ID.match(ref):  # log next to the evaluated run
            experiment_id = client.get_run(ref).info.experiment_id
        detectors.append(StressedDetector(loaded.cfg.model.name, ref, loaded, experiment_id))
    deduplicate_labels(detectors)
    return detectors


def build_test_datamodule(cfg: DictConfig, detector: StressedDetector):
    """The datamodule of ``cfg.data`` (root, generators) with ``detector``'s own preprocessing, set up."""
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    own = detector.loaded.cfg.data
    data.crop_size = own.crop_size
    data.resize_size = own.get("resize_size")
    data.equalizer = own.get("equalizer")
    data.train_augment = None
    data.persistent_workers = False
    if own.get("name") != cfg.data.name:
        log.info("%s was trained on data=%s, evaluated on data=%s", detector.label, own.get("name"), cfg.data.name)
    datamodule = instantiate(data)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


# -- MLflow --------------------------------------------------------------------------------------------
def log_run(client: mlflow.MlflowClient, cfg: DictConfig, det: StressedDetector, result: dict,
            grid: Sequence[Perturbation], artifacts: Sequence[Path], seconds: float) -> str:
    """Create the detector's ``task=ood_stress`` run (:func:`~experiments.tracking.create_run`, in
    ``ood_stress-<training experiment>``), log its ``ood/...`` metrics, what it ran (``stress/*`` params: the
    detector, the grid, the order, the detector's own sizes) and the shared artifacts."""
    tags = {"task": "ood_stress", "evaluated_run": det.ref, "model": det.loaded.cfg.model.name,
            "detector": det.label, "data": cfg.data.name, "seed": str(cfg.seed)}
    run_id = create_run(cfg, task_experiment_name(cfg), f"ood_stress-{det.label}", tags)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in ood_metric_items(result, grid).items()]
    metrics.append(Metric("time/ood_seconds", float(seconds), now, 0))
    params = [Param("stress/ckpt", det.ref[:500]), Param("stress/grid", ",".join(p.key for p in grid)[:6000]),
              Param("stress/order", perturbation_order(cfg.ood.get("order"))),
              Param("stress/too_small", str(cfg.ood.get("too_small") or "skip")),
              Param("stress/crop_size", str(det.loaded.cfg.data.crop_size)),
              Param("stress/resize_size", str(det.loaded.cfg.data.get("resize_size")))]
    views, pooling = eval_views(cfg)
    params += [Param("stress/views", str(views)), Param("stress/pooling", pooling),
               Param("stress/views_used", views.for_detector(det.loaded.native_views).describe(
                   int(det.loaded.cfg.data.crop_size))[:500])]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])
    client.log_batch(run_id, params=params)
    for path in artifacts:
        client.log_artifact(run_id, str(path), "ood_stress")
    end_run(client, run_id)
    return run_id


# -- the task ------------------------------------------------------------------------------------------
def eval_views(cfg: DictConfig) -> tuple[Views, str]:
    """``eval.views`` and ``eval.pooling`` of the config, parsed."""
    settings = cfg.get("eval") or {}
    return parse_views(settings.get("views")), parse_pooling(settings.get("pooling"))


def ood_stress(cfg: DictConfig) -> dict[str, Any]:
    """Run the OOD grid on every detector; returns results, run ids and written paths."""
    client = mlflow_client(cfg.logger.tracking_uri)
    uri = client.tracking_uri
    grid = ood_grid(cfg.ood)
    views, pooling = eval_views(cfg)
    detectors = resolve_detectors(cfg, client, uri)
    log.info("OOD stress: %d detectors x %d grid points on data=%s", len(detectors), len(grid), cfg.data.name)

    start = time.perf_counter()
    results = evaluate_detectors(detectors, grid, int(cfg.seed), lambda det: build_test_datamodule(cfg, det),
                                 order=cfg.ood.get("order"), too_small=cfg.ood.get("too_small"), views=views,
                                 pooling=pooling)
    seconds = time.perf_counter() - start

    out_dir = Path(cfg.paths.report_dir) / "ood_stress"
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = write_curves(results, grid, out_dir)
    md, wide, long = write_tables(results, grid, out_dir)
    severity = write_severity_table(results, grid, out_dir)
    artifacts = [*curves, md, wide, long, *severity]
    run_ids = {d.label: log_run(client, cfg, d, results[d.label], grid, artifacts, seconds) for d in detectors}

    print_tables(results, grid)
    print_severity_table(results, grid)
    Console().print(f"OOD stress of {len(detectors)} detectors x {len(grid)} settings in {seconds:.1f} s; "
                    f"written to {out_dir}")
    announce_outputs(out_dir, list(run_ids.values()), uri)
    return {"results": results, "run_ids": run_ids, "seconds": seconds, "curves": curves,
            "markdown": md, "csv": wide, "metrics_csv": long, "severity": severity,
            "detectors": {d.label: d.ref for d in detectors}}
