"""Turn the composed Hydra config into the objects of a run."""

from __future__ import annotations

import logging

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, Trainer
from omegaconf import DictConfig, OmegaConf

from experiments.data.datamodule import DetectorDataModule, missing_root_error
from experiments.lit_module import DetectorModule

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> DetectorDataModule:
    if OmegaConf.is_missing(cfg.data, "root"):
        raise missing_root_error(cfg.data.name)
    return instantiate(cfg.data)


def build_net(cfg: DictConfig) -> torch.nn.Module:
    return instantiate(cfg.model.net)


def build_module(cfg: DictConfig, net: torch.nn.Module | None = None) -> DetectorModule:
    return DetectorModule(
        net=net if net is not None else build_net(cfg),
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        scheduler_monitor=cfg.model.get("scheduler_monitor", "val/loss"),
    )


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]


def resolve_precision(precision: str | int) -> str | int:
    """``auto``: FP16 mixed precision on CUDA (Synapse-7's setting), full precision elsewhere."""
    if precision == "auto":
        return "16-mixed" if torch.cuda.is_available() else "32-true"
    return precision


def build_trainer(cfg: DictConfig, callbacks: list[Callback], logger) -> Trainer:
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, precision=resolve_precision(cfg.trainer.precision)
    )


def single_device_trainer(cfg: DictConfig) -> Trainer:
    """A one-device, logger-free Trainer for scoring after (distributed) training."""
    accelerator = "cpu" if cfg.trainer.get("accelerator") == "cpu" or not torch.cuda.is_available() else "gpu"
    return Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                   enable_model_summary=False, precision=resolve_precision(cfg.trainer.precision),
                   default_root_dir=cfg.paths.output_dir)
