"""``task=evaluate``: score a trained detector on a dataset, with the same metrics and plots as training.

Usage::

    python run.py task=evaluate ckpt=<MLflow run id | run folder | weights file> [data=... data.root=...]

The detector is rebuilt from its own saved config and weights
(:func:`experiments.training.checkpoints.load_detector`). The data come from the *current*
``cfg.data``, so a detector trained on one dataset (or generator) can be scored on
another, but the images are preprocessed at the detector's own sizes
(``crop_size``/``resize_size`` of the training run) unless
``task.keep_data_sizes=false``; its leakage equaliser is kept too when the current
config names none (``task.keep_equalizer``). Val and test are predicted in batches
without gradients, scored by :func:`experiments.evaluation.predictions.score` (so the metric
names are the training run's: ``test/auc``, ``test/<generator>/auc``, the
val-calibrated threshold, ...), and written to ``metrics.json`` with the
diagnostics of :mod:`experiments.evaluation.diagnostics` in ``cfg.paths.output_dir``.
Everything is logged to a new MLflow run of ``evaluate-<data>`` (``logger.task_experiment_name``) tagged
``task=evaluate`` and ``evaluated_run=<ckpt>``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import tracking
from experiments.errors import UserError
from experiments.training.builders import build_datamodule
from experiments.training.checkpoints import LoadedDetector, load_detector
from experiments.evaluation.diagnostics import write_diagnostics
from experiments.evaluation.predictions import Predictions, print_metrics_table, score
from experiments.process import progress

log = logging.getLogger(__name__)



class MissingCheckpoint(ValueError, UserError):
    """``task=evaluate`` was started without ``ckpt=``."""


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run ``task=evaluate`` and return the flat metrics (also in ``<output_dir>/metrics.json``)."""
    if not cfg.get("ckpt"):
        raise MissingCheckpoint(
            "task=evaluate needs a trained detector: pass ckpt=<MLflow run id | run folder | weights file>, e.g. "
            "`python run.py task=evaluate ckpt=logs/train/runs/<run>` (the folder holding config.yaml and the "
            "weights) or `ckpt=<32-hex MLflow run id>`"
        )
    device = _device(cfg)
    detector = load_detector(cfg.ckpt, cfg.logger.tracking_uri, device=device)
    eval_cfg = evaluation_config(cfg, detector.cfg)
    datamodule = build_datamodule(eval_cfg)
    datamodule.prepare_data()
    datamodule.setup()

    out_dir = Path(eval_cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(eval_cfg, resolve=True))
    logger = tracking.build_logger(eval_cfg)
    try:
        tracking.log_config(logger, eval_cfg)
        tracking.log_metrics(logger, datamodule.counts(), step=0)
        names = datamodule.generator_names
        val = predict(detector, datamodule.val_dataloader(), names)
        test = predict(detector, datamodule.test_dataloader(), names)
        metrics = score(val, test)
        tracking.log_metrics(logger, metrics)
        metrics_path = out_dir / "metrics.json"
        metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        tracking.log_artifact(logger, metrics_path)
        if eval_cfg.get("diagnostics", True):
            write_diagnostics(eval_cfg, detector.model, datamodule, val, test, out_dir, logger)
    except BaseException:
        logger.experiment.set_terminated(logger.run_id, "FAILED")
        raise
    logger.experiment.set_terminated(logger.run_id, "FINISHED")
    print_metrics_table(f"{eval_cfg.model.name} on {eval_cfg.data.name} (ckpt={cfg.ckpt})", metrics)
    tracking.announce_outputs(out_dir, logger.run_id, eval_cfg.logger.tracking_uri)
    return metrics


def _device(cfg: DictConfig) -> str:
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "auto"))
    return "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"


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
    return eval_cfg


def predict(detector: LoadedDetector, loader, generator_names: list[str]) -> Predictions:
    """P(synthetic) of every readable image of ``loader``, batch by batch, without gradients."""
    batches = [
        {"prob": detector.predict_proba(b["image"]), "label": b["label"], "generator": b["generator"],
         "index": b["index"]}
        for b in progress(loader, "evaluate: scoring") if not b.get("empty")
    ]
    if not batches:
        raise ValueError("no readable image in this split")
    return Predictions.from_batches(batches, list(generator_names))
