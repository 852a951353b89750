"""``task=train``: fit one detector on one dataset, evaluate it, and track everything in MLflow."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from lightning.pytorch.utilities import rank_zero_only

from detectors.backbones import count_parameters
from experiments import tracking
from experiments.check_data import BadDataError, preflight
from experiments.builders import (
    build_callbacks,
    build_datamodule,
    build_module,
    build_trainer,
    single_device_trainer,
    trainer_precision,
)
from experiments.diagnostics import write_diagnostics
from experiments.evaluate import Predictions, predict_split, print_metrics_table, score
from experiments.resume import RUN_ID_FILE, ResumePoint
from experiments.safe_paths import inside, plain_name

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    """Train ``cfg.model`` on ``cfg.data``; return the best value of ``cfg.optimized_metric`` (for sweepers)."""
    plain_name(cfg.model.name, "model.name")  # fail before any training when it would escape the run folder
    L.seed_everything(cfg.seed, workers=True)
    resume = _resume_point(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = tracking.build_logger(cfg)
    if rank_zero_only.rank == 0:  # under DDP, the other ranks only train
        _open_run(cfg, logger, datamodule, out_dir, resume)
    else:  # the same verdict on bad data as rank 0, from rank 0's cached data check
        preflight(cfg, datamodule, rank=rank_zero_only.rank)

    start = time.perf_counter()
    fit = _fit_sklearn if cfg.model.family == "sklearn" else _fit_lightning
    result = fit(cfg, datamodule, out_dir, logger)
    if result is None:  # a non-zero DDP rank: rank 0 evaluates and logs
        return None
    model, val, test, n_params = result
    fit_seconds = time.perf_counter() - start

    metrics = score(val, test)
    metrics.update({"time/fit_seconds": fit_seconds, "model/params": n_params})
    tracking.log_metrics(logger, metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    tracking.log_artifact(logger, out_dir / "metrics.json")
    if cfg.get("diagnostics", True):
        write_diagnostics(cfg, model, datamodule, val, test, out_dir, logger)
    logger.experiment.set_terminated(logger.run_id, "FINISHED")
    print_metrics_table(f"{cfg.model.name}: best checkpoint", metrics)
    return metrics.get(f"best_{cfg.optimized_metric}") if cfg.get("optimized_metric") else None


def _open_run(cfg: DictConfig, logger, datamodule, out_dir: Path, resume: ResumePoint | None) -> None:
    """Record the config, run id and data checks of a new run; or reopen an interrupted one."""
    if resume is None:
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (out_dir / RUN_ID_FILE).write_text(logger.run_id)
        logger.experiment.set_tag(logger.run_id, "output_dir", str(out_dir.resolve()))
        if cfg.model.family != "sklearn":
            logger.experiment.set_tag(logger.run_id, "precision", str(trainer_precision(cfg)))
        tracking.log_config(logger, cfg)
        tracking.log_metrics(logger, datamodule.counts(), step=0)
    else:  # the same MLflow run goes on: params and step-0 records are already there
        logger.experiment.update_run(logger.run_id, status="RUNNING")
        logger.experiment.set_tag(logger.run_id, "resumed_from", str(resume.ckpt))
    try:
        preflight(cfg, datamodule, logger if resume is None else None)
    except BadDataError:
        logger.experiment.set_terminated(logger.run_id, "FAILED")
        raise


def _resume_point(cfg: DictConfig) -> ResumePoint | None:
    """For ``resume=...``: point the run folder and the MLflow run at the interrupted ones."""
    if not cfg.get("resume"):
        return None
    resume = ResumePoint.find(cfg.resume, tracking.resolve_tracking_uri(cfg.logger.tracking_uri))
    with open_dict(cfg):
        cfg.paths.output_dir = str(resume.folder)
        cfg.logger.run_id = resume.run_id
        cfg.resume = str(resume.ckpt)
    log.info("resuming %s (MLflow run %s)", resume.ckpt, resume.run_id)
    return resume


def _fit_lightning(cfg: DictConfig, datamodule, out_dir: Path, logger) -> tuple[object, Predictions, Predictions, int]:
    module = build_module(cfg)
    callbacks = build_callbacks(cfg)
    trainer = build_trainer(cfg, callbacks, logger)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("resume"), weights_only=True)
    if not trainer.is_global_zero:
        return None
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        tracking.log_artifact(logger, best, "checkpoints")
    weights = export_weights(module.net, out_dir, cfg.model.name)
    tracking.log_artifact(logger, weights)
    tracking.log_artifact(logger, out_dir / "config.yaml", "checkpoints")
    names = datamodule.generator_names
    scorer = trainer if trainer.world_size == 1 else single_device_trainer(cfg)  # every image scored exactly once
    val = predict_split(scorer, module, datamodule.val_dataloader(), names)
    test = predict_split(scorer, module, datamodule.test_dataloader(), names)
    return module.net.eval(), val, test, count_parameters(module.net)


def export_weights(net: torch.nn.Module, out_dir: Path, model_name: str) -> Path:
    """Save the plain state dict ``<model_name>.pth`` (loadable with ``torch.load(weights_only=True)``)."""
    path = inside(out_dir, f"{plain_name(model_name, 'model.name')}.pth")
    torch.save(net.state_dict(), path)
    return path


def _fit_sklearn(cfg: DictConfig, datamodule, out_dir: Path, logger) -> tuple[object, Predictions, Predictions, int]:
    """The classical path: features in torch batches, then scikit-learn's scaler and classifier; no Lightning loop."""
    from experiments.sklearn_io import collect_features, count_estimator_parameters, save_estimator

    pipeline = instantiate(cfg.model.estimator)
    features, head = pipeline[:1], pipeline[1:]
    x_train, y_train, _, _ = collect_features(datamodule.train_dataloader(), features)
    head.fit(x_train, y_train)
    names = datamodule.generator_names
    preds = []
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        x, y, g, index = collect_features(loader, features)
        prob = head.predict_proba(x)[:, 1]
        preds.append(Predictions(prob, y, g, index, names))
    val = preds[0]
    from experiments.metrics import binary_metrics

    step_metrics = {f"val/{k}": v for k, v in binary_metrics(val.prob, val.label).items()
                    if k in ("accuracy", "f1", "precision", "recall", "auc", "ap")}
    tracking.log_metrics(logger, step_metrics, step=0)
    path = save_estimator(pipeline, inside(out_dir, f"{plain_name(cfg.model.name, 'model.name')}.skops"))
    tracking.log_artifact(logger, path)
    tracking.log_artifact(logger, out_dir / "config.yaml", "checkpoints")
    n_params = count_estimator_parameters(head[-1])
    return pipeline, val, preds[1], n_params
