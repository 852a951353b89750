"""``task=evaluate``: score a trained detector on a dataset, with the same metrics and plots as training.

Usage::

    python run.py task=evaluate ckpt=<MLflow run id | run folder | weights file> [data=... data.root=...]
    python run.py task=evaluate ckpt=models:/<name>/<version>   # or models:/<name>@<alias>, runs:/<run id>/model

The detector is rebuilt from its own saved config and weights
(:func:`experiments.inference.loading.load_detector`). The data come from the *current*
``cfg.data``, so a detector trained on one dataset (or generator) can be scored on
another, but the images are preprocessed at the detector's own sizes
(``crop_size``/``resize_size`` of the training run) unless
``task.keep_data_sizes=false``; its leakage equaliser is kept too when the current
config names none (``task.keep_equalizer``). Val and test are predicted in batches
without gradients (:func:`experiments.inference.scoring.score_split`), scored by
:func:`experiments.evaluation.predictions.score` (so the metric
names are the training run's: ``test/auc``, ``test/<generator>/auc``, ...), and written to
``metrics.json`` with the diagnostics of :mod:`experiments.evaluation.diagnostics` in
``cfg.paths.output_dir``.

The detector's decision threshold and calibrator travel with it: ``threshold/val_calibrated``
and ``test/<m>_at_val_threshold`` use the threshold chosen on the *training run's* validation
split, and ``test/ece_calibrated`` / ``test/brier_calibrated`` its val-fitted calibrator (both
from the run's ``calibration.json``), so a cross-dataset figure uses no target label. Fitting
them again on the target's val split is an explicit choice, ``task.recalibrate_on_target=true``;
those figures are added under their own names: ``threshold/val_target_calibrated``,
``test/<m>_at_val_threshold_target_calibrated``, ``test/ece_target_calibrated``,
``test/brier_target_calibrated`` and ``plots/calibration_target_calibrated.png``.
The views scored per image are ``eval.views`` (``auto``, ``center``, ``grid:K``, ``all``: crops at the training
crop size cut from the image at its native size, :mod:`experiments.inference.tiling`), pooled by
``eval.pooling`` (``mean``, ``max``); the run's tags ``views``, ``views_used`` (what they meant for this
detector) and ``pooling`` record them, and ``views/<split>_per_image`` is the mean number of views an image got.
``auto`` is one centre crop except for a spectral detector (``model.native_views``) on images more than twice
the crop.
The training run's operating point (chosen on its val reals, ``eval.operating_point``) and abstention band
travel the same way: ``op/threshold``, ``test/tpr_at_op``, ``test/fpr_at_op``, ``test/fpr_drift_at_op``,
``test/<generator>/tpr_at_op`` and, with a band, ``test/coverage`` and ``test/selective_accuracy``
(:mod:`experiments.evaluation.deployment`); a run that stored none gets a warning and none of them.
Everything is logged to a new MLflow run of ``evaluate-detectors-<data>`` (``logger.task_experiment_name``) tagged
``task=evaluate`` and ``evaluated_run=<ckpt>``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import tracking
from experiments.errors import UserError
from experiments.training.builders import (
    bootstrap_settings,
    build_datamodule,
    deployment_settings,
    diagnostics_settings,
)
from experiments.inference.device import resolve_device
from experiments.inference.loading import LoadedDetector, load_detector
from experiments.inference.scoring import score_split
from experiments.inference.tiling import parse_pooling, parse_views, views_loader
from experiments.evaluation.diagnostics import write_diagnostics
from experiments.evaluation.calibration import (
    CALIBRATION_FILE,
    calibrated_probs,
    calibration_metrics,
    fit_val_calibration,
)
from experiments.evaluation.abstention import fit_band
from experiments.evaluation.curves import plot_calibration
from experiments.evaluation.deployment import DeploymentSettings, deployment_summary, operating_point_metrics
from experiments.evaluation.metrics import calibrated_threshold
from experiments.evaluation.predictions import (
    BootstrapSettings,
    Predictions,
    metrics_at_threshold,
    print_metrics_table,
    score,
)
from experiments.evaluation.real_sources import (
    print_real_sources,
    report_real_sources,
)

log = logging.getLogger(__name__)


class MissingCheckpoint(ValueError, UserError):
    """``task=evaluate`` was started without ``ckpt=``."""


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run ``task=evaluate`` and return the flat metrics (also in ``<output_dir>/metrics.json``)."""
    if not cfg.get("ckpt"):
        raise MissingCheckpoint(
            "task=evaluate needs a trained detector: pass ckpt=<MLflow run id | run folder | weights file> or an "
            "MLflow model URI (models:/<name>/<version>, models:/<name>@<alias>, runs:/<run id>/model), e.g. "
            "`python run.py task=evaluate ckpt=logs/train/runs/<run>` (the folder holding config.yaml and the "
            "weights) or `ckpt=<32-hex MLflow run id>`"
        )
    settings = cfg.get("eval") or {}
    views, pooling = parse_views(settings.get("views")), parse_pooling(settings.get("pooling"))
    deployment = deployment_settings(cfg)  # a bad eval.abstain stops here, before anything is loaded
    device = resolve_device(_device_name(cfg))
    detector = load_detector(cfg.ckpt, cfg.logger.tracking_uri, device=device)
    requested, views = str(views), views.for_detector(detector.native_views)
    eval_cfg = evaluation_config(cfg, detector.cfg)
    datamodule = build_datamodule(eval_cfg)
    datamodule.prepare_data()
    datamodule.setup()

    out_dir = Path(eval_cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(eval_cfg, resolve=True))
    with open_dict(eval_cfg):
        eval_cfg.logger.tags.update({"views": requested, "views_used": views.describe(int(eval_cfg.data.crop_size)),
                                     "pooling": pooling})
    logger = tracking.build_logger(eval_cfg)
    try:
        tracking.log_metrics(logger, datamodule.counts(), step=0)
        names = datamodule.generator_names
        seen = {split: Counter() for split in ("val", "test")}
        val, test = (score_split(detector, _loader(datamodule, split, views), names, pooling=pooling,
                                 views_seen=seen[split]) for split in ("val", "test"))
        tracking.log_metrics(logger, {f"views/{split}_per_image": sum(n * k for n, k in counts.items())
                                      / max(sum(counts.values()), 1) for split, counts in seen.items()})
        metrics = trained_threshold_metrics(detector, val, test, bootstrap_settings(eval_cfg))
        metrics.update(stored_operating_point_metrics(detector, test, bootstrap_settings(eval_cfg), deployment))
        metrics.update(report_real_sources(test, datamodule.splits["test"], detector.operating_threshold,
                                           bootstrap_settings(eval_cfg), out_dir, logger))
        recalibrated = None
        if (cfg.get("task") or {}).get("recalibrate_on_target", False):
            target_metrics, recalibrated = target_calibrated_metrics(detector, val, test)
            metrics.update(target_metrics)
        tracking.log_metrics(logger, metrics)
        metrics_path = out_dir / "metrics.json"
        metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        tracking.log_artifact(logger, metrics_path)
        if eval_cfg.get("diagnostics", True):
            write_diagnostics(detector.kind, detector.model, datamodule, test, out_dir, logger,
                              diagnostics_settings(eval_cfg),
                              calibrated_prob=None if detector.calibrator is None else detector.calibrate(test.prob),
                              calibration_label=f"{detector.kind.calibrator.kind} scaling of the training run's val")
            if recalibrated is not None:
                path = out_dir / "plots" / "calibration_target_calibrated.png"
                plot_calibration(test.prob, test.label, path, probs_calibrated=recalibrated,
                                 calibrated_label=f"{detector.kind.calibrator.kind} scaling fitted on the target's val")
                tracking.log_artifact(logger, path, "plots")
    except BaseException:
        tracking.end_run(logger.experiment, logger.run_id, "FAILED")
        raise
    tracking.end_run(logger.experiment, logger.run_id)
    print_metrics_table(f"{eval_cfg.model.name} on {eval_cfg.data.name} (ckpt={cfg.ckpt})", metrics)
    for line in deployment_summary(metrics):
        print(line)
    print_real_sources(metrics)
    tracking.announce_outputs(out_dir, logger.run_id, eval_cfg.logger.tracking_uri)
    return metrics


def _loader(datamodule, split: str, views):
    """The split's batches: the datamodule's own for one centre crop per image, else batches of views."""
    if views.center_only:
        return datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    return views_loader(datamodule, split, views)


def trained_threshold_metrics(detector: LoadedDetector, val: Predictions, test: Predictions,
                              bootstrap: BootstrapSettings | None = None) -> dict[str, float]:
    """:func:`score` at the threshold of the detector's training run (chosen on *its* val split), plus ECE and
    Brier before and after *its* calibrator (``test/ece_calibrated``, ``test/brier_calibrated``).

    A run saved without ``calibration.json`` has no stored threshold: 0.5 is used, with a warning.
    """
    threshold = detector.val_threshold
    if threshold is None:
        log.warning("%s has no %s beside it: the threshold is 0.5 (no target labels are used); re-train the "
                    "detector to store its val threshold, or pass task.recalibrate_on_target=true",
                    detector.source, CALIBRATION_FILE)
        threshold = 0.5
    metrics = score(val, test, threshold=threshold, bootstrap=bootstrap)
    if detector.calibrator is not None:
        metrics.update(calibration_metrics(detector.calibrator, test.prob, test.label))
    return metrics


def stored_operating_point_metrics(detector: LoadedDetector, test: Predictions,
                                   bootstrap: BootstrapSettings | None = None,
                                   settings: DeploymentSettings | None = None) -> dict[str, float]:
    """The operating point metrics (:func:`~experiments.evaluation.deployment.operating_point_metrics`) of ``test``
    at the threshold the training run chose on *its* val reals, with *its* abstention band (or the band
    ``eval.abstain=[low, high]`` gives here; a ``coverage@`` band is the training run's, never refitted on the
    target). A run saved without an operating point gets none of these metrics, with a warning."""
    record = detector.operating_point
    if record is None:
        log.warning("%s stored no operating point (trained before eval.operating_point existed, or its val split "
                    "had no real image): test/tpr_at_op, test/fpr_at_op and the abstention metrics are skipped; "
                    "re-train the detector to store one", detector.source)
        return {}
    band = detector.abstention
    spec = None if settings is None else settings.abstain
    if spec is not None and spec.band is not None:
        band = fit_band(spec, [], float(record["threshold"]))
    return operating_point_metrics(test, float(record["threshold"]), float(record["target_fpr"]), band, bootstrap)


def target_calibrated_metrics(detector: LoadedDetector, val: Predictions, test: Predictions,
                              ) -> tuple[dict[str, float], np.ndarray | None]:
    """``task.recalibrate_on_target=true``: a threshold and a calibrator fitted on the *target's* val split (this
    uses target labels), named ``*_target_calibrated``; returns the metrics and the recalibrated test P."""
    threshold = calibrated_threshold(val.prob, val.label)
    metrics = {"threshold/val_target_calibrated": float(threshold),
               **metrics_at_threshold(test, threshold, "_target_calibrated")}
    try:
        calibrator = fit_val_calibration(detector.kind.calibrator, val.prob, val.label)
    except ValueError as err:
        log.warning("no calibrator fitted on the target's val split: %s", err)
        return metrics, None
    metrics.update(calibration_metrics(calibrator, test.prob, test.label, suffix="target_calibrated"))
    return metrics, calibrated_probs(calibrator, test.prob)


def _device_name(cfg: DictConfig) -> str:
    """``auto`` (CUDA when available) unless ``trainer.accelerator`` asks for something else than a GPU."""
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "auto"))
    return "auto" if accelerator in ("auto", "gpu", "cuda") else "cpu"


def evaluation_config(cfg: DictConfig, trained: DictConfig) -> DictConfig:
    """The current config with the trained run's ``model``, its preprocessing sizes and the evaluate tags.

    ``data`` stays the current one (another dataset is allowed); ``crop_size`` and
    ``resize_size`` come from the trained run unless ``task.keep_data_sizes=false``, and
    its equaliser is used when the current data has none (``task.keep_equalizer``).
    """
    eval_cfg = copy.deepcopy(cfg)
    task = cfg.get("task") or {}
    with open_dict(eval_cfg):
        eval_cfg.model = OmegaConf.create(OmegaConf.to_container(trained.model, resolve=True))
        if task.get("keep_data_sizes", True):
            eval_cfg.data.crop_size = trained.data.crop_size
            eval_cfg.data.resize_size = trained.data.get("resize_size")
        if task.get("keep_equalizer", True) and eval_cfg.data.get("equalizer") is None \
                and trained.data.get("equalizer") is not None:
            eval_cfg.data.equalizer = OmegaConf.to_container(trained.data.equalizer, resolve=True)
        current = eval_cfg.logger.get("tags")
        tags = dict(OmegaConf.to_container(current, resolve=True)) if current is not None else {}
        tags.update({"evaluated_run": str(cfg.ckpt), "trained_on": str(trained.data.get("name", "?"))})
        eval_cfg.logger.tags = tags
        eval_cfg.logger.run_name = f"evaluate-{trained.model.name}"
        eval_cfg.logger.run_id = None
        eval_cfg.logger.experiment_name = tracking.task_experiment_name(cfg)  # not the training experiment
        eval_cfg.logger.task_experiment_name = eval_cfg.logger.experiment_name
    return eval_cfg
