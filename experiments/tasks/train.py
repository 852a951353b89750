"""``task=train``: fit one detector on one dataset, evaluate it, and track everything in MLflow."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict
from lightning.pytorch.utilities import rank_zero_only

from experiments import tracking
from experiments.data.audit import DataReport, PreflightSettings, data_check_cache_dir
from experiments.evaluation.calibration import (
    CALIBRATION_FILE,
    Calibrator,
    calibrated_probs,
    calibration_metrics,
    fit_val_calibration,
    write_calibration,
)
from experiments.data.audit import write_data_stats, write_report
from experiments.evaluation.deployment import deployment_summary, fit_deployment, operating_point_metrics
from experiments.evaluation.diagnostics import write_diagnostics
from experiments.evaluation.predictions import print_metrics_table, score, write_predictions_csv
from experiments.evaluation.real_sources import (
    print_real_sources,
    report_real_sources,
)
from experiments.errors import UserError
from experiments.safe_paths import plain_name
from experiments.training.builders import (
    bootstrap_settings,
    build_datamodule,
    build_kind,
    check_pretrained_weights,
    deployment_settings,
    diagnostics_settings,
)
from experiments.training.logged_datasets import log_split_datasets
from experiments.training.logged_model import MODEL_NAME, log_detector_model
from experiments.training.resume import RUN_ID_FILE, ResumePoint
from experiments.training.slurm import in_slurm_job

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    """Train ``cfg.model`` on ``cfg.data``; return the best value of ``cfg.optimized_metric`` (for sweepers).

    The user's mistakes are reported in the order they cost to find, each before anything is downloaded or
    built: the config (model name, kind, a missing ``data.root``), the data layout and class counts (one walk
    of the tree, no image opened), the tracking store, and last the pretrained weights (offline told at once).
    """
    plain_name(cfg.model.name, "model.name")  # fail before any training when it would escape the run folder
    _check_registration(cfg.logger)
    deployment = deployment_settings(cfg)  # eval.operating_point and eval.abstain, before anything trains
    L.seed_everything(cfg.seed, workers=True)
    resume = _resume_point(cfg)
    datamodule = build_datamodule(cfg)  # config errors (a missing data.root) first: they cost nothing
    kind = build_kind(cfg)  # the kind's _target_ and its factories; nothing is built yet
    datamodule.prepare_tree()  # the demo data; the packs of data.cache are built by Lightning's prepare_data in fit
    datamodule.check_layout()  # the expected tree, or a split without both classes; setup() keeps this scan
    tracking.check_store(cfg.logger.tracking_uri)  # a server that does not answer, a store that cannot be opened
    check_pretrained_weights(cfg.model)  # download, or find in the cache, ImageNet/CLIP weights
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if getattr(datamodule, "chronology", None) is not None:  # experiment=chronological: tagged once the order is known
        OmegaConf.update(cfg, "logger.tags", datamodule.chronology.tags(), merge=True, force_add=True)
    logger = tracking.build_logger(cfg)
    data_error = None
    if rank_zero_only.rank == 0:  # under DDP rank 0 alone checks the data; fit hands its verdict to every rank
        data_error = _open_run(cfg, logger, datamodule, out_dir, resume)

    start = time.perf_counter()
    result = kind.fit(datamodule, out_dir, logger, data_error)
    if result is None:  # a non-zero DDP rank: rank 0 evaluates and logs
        return None
    model, val, test, n_params = result.model, result.val, result.test, result.n_params
    fit_seconds = time.perf_counter() - start

    metrics = score(val, test, bootstrap=bootstrap_settings(cfg))
    operating_point, band = fit_deployment(val, deployment)  # on val (its reals alone for the threshold)
    if operating_point is not None:
        metrics.update(operating_point_metrics(test, operating_point["threshold"], operating_point["target_fpr"],
                                               band, bootstrap_settings(cfg)))
    metrics.update(report_real_sources(test, datamodule.splits["test"],
                                       None if operating_point is None else operating_point["threshold"],
                                       bootstrap_settings(cfg), out_dir, logger))
    calibrator = _fit_calibrator(kind.calibrator, val)
    if calibrator is not None:
        metrics.update(calibration_metrics(calibrator, test.prob, test.label))
    metrics.update({"time/fit_seconds": fit_seconds, "model/params": n_params})
    tracking.log_metrics(logger, metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    tracking.log_artifact(logger, out_dir / "metrics.json")
    for split, predictions in (("val", val), ("test", test)):  # per image, for paired tests (task=compare)
        path = write_predictions_csv(predictions, datamodule.splits[split], out_dir / f"predictions_{split}.csv")
        tracking.log_artifact(logger, path)
    if calibrator is not None:  # beside the weights: load_detector (evaluate, detect, ood_stress) finds it there
        tracking.log_artifact(logger, write_calibration(
            out_dir / CALIBRATION_FILE, calibrator, metrics["threshold/val_calibrated"],
            operating_point=operating_point, abstention=None if band is None else band.record()))
    _log_model(cfg, kind, model, logger)
    if cfg.get("diagnostics", True):
        write_diagnostics(kind, model, datamodule, test, out_dir, logger, diagnostics_settings(cfg),
                          calibrated_prob=None if calibrator is None else calibrated_probs(calibrator, test.prob),
                          calibration_label=f"{kind.calibrator.kind} scaling fitted on val")
    tracking.end_run(logger.experiment, logger.run_id)  # waits for the queued metrics
    print_metrics_table(f"{cfg.model.name}: best checkpoint", metrics)
    for line in deployment_summary(metrics):
        print(line)
    print_real_sources(metrics)
    tracking.announce_outputs(out_dir, logger.run_id, cfg.logger.tracking_uri)
    return metrics.get(f"best_{cfg.optimized_metric}") if cfg.get("optimized_metric") else None


def _fit_calibrator(calibrator: type[Calibrator], val) -> Calibrator | None:
    """The post-hoc calibrator (class) of the detector's kind, fitted on the val split only (Guo et al., 2017 temperature
    scaling for CNNs; Platt, 1999 scaling for scikit-learn pipelines); None, with a warning, when val lacks a class."""
    try:
        return fit_val_calibration(calibrator, val.prob, val.label)
    except ValueError as err:
        log.warning("no post-hoc calibration for this run (%s); the run keeps its raw P(synthetic)", err)
        return None


class BadRegistration(ValueError, UserError):
    """``logger.register_as`` cannot be honoured."""


def _check_registration(logger_cfg: DictConfig) -> None:
    """Before anything trains: ``logger.register_as`` needs the run's MLflow model and a name that a
    ``models:/<name>/<version>`` URI can hold."""
    name = logger_cfg.get("register_as")
    if name is None:
        return
    if not logger_cfg.get("log_mlflow_model", True):
        raise BadRegistration(f"logger.register_as={name} registers the run's MLflow model: drop "
                              "logger.log_mlflow_model=false")
    if not str(name).strip() or any(c in str(name) for c in "/@:"):
        raise BadRegistration(f"logger.register_as={name!r}: a registered model name is not empty and holds no "
                              "'/', '@' or ':' (it is read back as models:/<name>/<version> and "
                              "models:/<name>@<alias>)")


def _log_model(cfg: DictConfig, kind, model, logger) -> None:
    """Log the detector as the run's MLflow model ``runs:/<run id>/model`` (registered as ``logger.register_as``
    when set). A detector that cannot be exported leaves the run with its weights file and a warning, unless it
    was to be registered: then the run fails."""
    register_as = cfg.logger.get("register_as")
    if not cfg.logger.get("log_mlflow_model", True):
        return
    try:
        info = log_detector_model(kind, model, int(cfg.data.crop_size), logger.experiment, logger.run_id,
                                  None if register_as is None else str(register_as))
    except Exception as err:  # noqa: BLE001 - the trained weights are logged already; say why the model is not
        log.warning("the detector could not be logged as an MLflow model (%s: %s); runs:/%s/%s is missing, the "
                    "run's weights file still loads it", type(err).__name__, err, logger.run_id, MODEL_NAME)
        logger.experiment.set_tag(logger.run_id, "mlflow_model_error", f"{type(err).__name__}: {err}"[:5000])
        if register_as is not None:  # asked for by name: the run fails rather than end without its version
            tracking.end_run(logger.experiment, logger.run_id, "FAILED")
            raise
        return
    registered = f", registered as models:/{register_as}/{info.registered_model_version}" if register_as else ""
    log.info("MLflow model runs:/%s/%s (%s)%s", logger.run_id, MODEL_NAME, info.model_uri, registered)


def _open_run(cfg: DictConfig, logger, datamodule, out_dir: Path, resume: ResumePoint | None) -> Exception | None:
    """Record the config, run id and data checks of a new run, or reopen an interrupted one; return what the data
    check raised (the run is then marked FAILED), for ``fit`` to raise on every rank."""
    if resume is None:
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (out_dir / RUN_ID_FILE).write_text(logger.run_id)
        logger.experiment.set_tag(logger.run_id, "output_dir", str(out_dir.resolve()))
        tracking.log_metrics(logger, datamodule.counts(), step=0)
        log_split_datasets(logger.experiment, logger.run_id, datamodule.name, datamodule.root, datamodule.splits)
    else:  # the same MLflow run goes on: params and step-0 records are already there
        logger.experiment.update_run(logger.run_id, status="RUNNING")
        logger.experiment.set_tag(logger.run_id, "resumed_from", str(resume.ckpt))

    def log_report(report: DataReport) -> None:  # before the verdict: a run that stops records why
        log_data_report(report, logger, out_dir, datamodule.max_bad_fraction)

    try:  # the datamodule's own gate: a scan of the files, or a pack's record of them (no report)
        report = datamodule.preflight(_preflight_settings(cfg, datamodule), log_report if resume is None else None)
    except Exception as err:  # noqa: BLE001 - raised by fit on every rank, so no rank waits for a stopped rank 0
        tracking.end_run(logger.experiment, logger.run_id, "FAILED")
        return err
    if report is not None:
        _record_data_stats(cfg, report, logger, out_dir)
    return None


def log_data_report(report: DataReport, logger, out_dir: Path, max_bad_fraction: float) -> None:
    """Log the data check's counts (``data/images``, ``data/unreadable``, ..., the probe AUROCs) at step 0 and its
    ``data_report.{json,txt}`` (written to ``out_dir``) under the run's ``data/`` artifacts."""
    tracking.log_metrics(logger, report.summary_metrics(), step=0)
    for path in write_report(report, out_dir, max_bad_fraction):
        tracking.log_artifact(logger, path, "data")


def _preflight_settings(cfg: DictConfig, datamodule) -> PreflightSettings:
    """The data gate's settings: ``data.max_bad_fraction``, the scan cache under ``paths.cache_dir``, the seed."""
    return PreflightSettings(max_bad_fraction=float(datamodule.max_bad_fraction),
                             cache_dir=data_check_cache_dir(cfg.get("paths", {}).get("cache_dir")),
                             seed=int(cfg.get("seed", 0) or 0))


def _record_data_stats(cfg: DictConfig, report, logger, out_dir: Path) -> None:
    """Save the train images' sizes (``data_stats.json``) in the run folder and MLflow, for ``detect``'s checks."""
    sizes = {"crop_size": cfg.data.get("crop_size"), "resize_size": cfg.data.get("resize_size")}
    tracking.log_artifact(logger, write_data_stats(report, out_dir, sizes))


def _resume_point(cfg: DictConfig) -> ResumePoint | None:
    """For ``resume=...``, or a requeued SLURM job whose run folder holds a checkpoint and the run id: point the run
    folder and the MLflow run at the interrupted ones."""
    if cfg.get("resume"):
        resume = ResumePoint.find(cfg.resume, tracking.resolve_tracking_uri(cfg.logger.tracking_uri))
    elif in_slurm_job():
        resume = ResumePoint.after_requeue(Path(cfg.paths.output_dir))
        if resume is None:
            return None
        log.info("requeued SLURM job %s: its run folder holds %s", os.environ.get("SLURM_JOB_ID"), resume.ckpt.name)
    else:
        return None
    with open_dict(cfg):
        cfg.paths.output_dir = str(resume.folder)
        cfg.logger.run_id = resume.run_id
        cfg.resume = str(resume.ckpt)
    log.info("resuming %s (MLflow run %s)", resume.ckpt, resume.run_id)
    return resume
