"""Turn the composed Hydra config into the objects of a run: the one training module that reads ``cfg``.

Pretrained weights: a factory that loads pretrained weights owns its check. The object a config node's
``_target_`` names (``detectors.backbones.create_backbone``, ``detectors.clip_probe.CLIPImageFeatures``)
carries ``ensure_weights`` (called with the node's keys: fetch the weights, or find them offline, or raise a
:class:`~detectors.backbones.PretrainedWeightsUnavailable` naming the weights and the keys to set) and
``without_weights`` (the keys that mean random initialisation). :func:`check_pretrained_weights` calls every
such node's own check, last of ``task=train``'s checks (after the config, the data layout and the tracking store)
and before anything is built or a run is opened; :func:`without_pretrained_weights` is
the one path that turns them off: for throughput benchmarks, for loading a trained detector (its own weights
replace ImageNet's, :func:`build_kind` with ``pretrained=False``) and for tests.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from lightning.pytorch import Callback, Trainer
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from experiments.data.datamodule import DetectorDataModule, missing_root_error
from experiments.errors import instantiate
from experiments.evaluation.abstention import parse_abstain
from experiments.evaluation.deployment import DeploymentSettings
from experiments.evaluation.diagnostics import DiagnosticsSettings, plot_subject
from experiments.evaluation.operating_point import parse_operating_point
from experiments.evaluation.predictions import BootstrapSettings
from experiments.training.kinds import DetectorKind
from experiments.training.lit_module import DetectorModule
from experiments.training.progress import progress_bar

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> DetectorDataModule:
    if OmegaConf.is_missing(cfg.data, "root"):
        raise missing_root_error(cfg.data.name)
    return instantiate(cfg.data)


def build_net(cfg: DictConfig) -> torch.nn.Module:
    return instantiate(cfg.model.net)


def build_kind(cfg: DictConfig, pretrained: bool = True) -> DetectorKind:
    """The kind of ``cfg.model`` (``model.kind._target_``), built once per run with what it fits, scores and
    loads with: the model's name and the factory of its untrained detector (``model.estimator`` for a
    scikit-learn pipeline; else ``model.net`` and ``model.module``, with the run's trainer and resume point).

    ``pretrained=False`` turns every pretrained weight of the model off (:func:`without_pretrained_weights`, on a
    copy of ``cfg``): for loading a trained run, whose own weights replace ImageNet's, without a download.
    """
    if not pretrained:
        cfg = without_pretrained_weights(copy.deepcopy(cfg))
    kind = instantiate(cfg.model.kind, _partial_=True)
    if "estimator" in cfg.model:
        return kind(name=cfg.model.name, estimator_factory=partial(instantiate, cfg.model.estimator))
    return kind(name=cfg.model.name, net_factory=partial(build_net, cfg),
                module_factory=partial(build_module, cfg), trainer_factory=partial(_run_trainer, cfg),
                scorer_factory=partial(single_device_trainer, cfg), resume=cfg.get("resume"))


def build_module(cfg: DictConfig, net: torch.nn.Module | None = None) -> DetectorModule:
    """The LightningModule of ``cfg.model.module`` (``_target_``) around ``net`` (default: ``cfg.model.net``)."""
    return instantiate(cfg.model.module, net=net if net is not None else build_net(cfg))


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str | int:
    """The Lightning precision of ``trainer.precision``; ``auto`` picks, for the device the run trains on:

    * ``bf16-mixed`` on a CUDA device that supports bfloat16 (Ampere and newer): float16's range is too
      small for spectral features and their losses, bfloat16 has float32's;
    * ``16-mixed`` on older CUDA devices (with Lightning's gradient scaler);
    * ``32-true`` on the CPU (``trainer.accelerator=cpu`` or no CUDA device).

    Features run in float32 whatever is chosen (``features.precision``); the choice applies to the backbones.
    """
    if str(precision) != "auto":
        return precision
    if accelerator == "cpu" or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def trainer_precision(cfg: DictConfig) -> str | int:
    """:func:`resolve_precision` of the run's trainer config."""
    return resolve_precision(cfg.trainer.precision, str(cfg.trainer.get("accelerator", "auto")))


def build_trainer(cfg: DictConfig, callbacks: list[Callback], logger) -> Trainer:
    precision = trainer_precision(cfg)
    if str(cfg.trainer.precision) == "auto":
        log.info("trainer.precision=auto -> %s", precision)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, precision=precision)


def _run_trainer(cfg: DictConfig, logger, extra_callbacks: list[Callback] = ()) -> Trainer:
    """The run's trainer with its configured callbacks and ``extra_callbacks``, logging to ``logger``."""
    return build_trainer(cfg, build_callbacks(cfg) + list(extra_callbacks), logger)


def single_device_trainer(cfg: DictConfig) -> Trainer:
    """A one-device, logger-free Trainer for scoring after (distributed) training."""
    accelerator = "cpu" if cfg.trainer.get("accelerator") == "cpu" or not torch.cuda.is_available() else "gpu"
    return Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                   enable_model_summary=False, precision=trainer_precision(cfg), callbacks=[progress_bar()],
                   default_root_dir=cfg.paths.output_dir)


def bootstrap_settings(cfg: DictConfig) -> BootstrapSettings:
    """The intervals of a run's test metrics: ``stats.bootstrap_resamples``, ``stats.confidence`` and ``seed``."""
    return BootstrapSettings(int(cfg.stats.bootstrap_resamples), float(cfg.stats.confidence), int(cfg.seed or 0))


def deployment_settings(cfg: DictConfig) -> DeploymentSettings:
    """The operating point and abstention band of a run: ``eval.operating_point`` (default ``fpr@0.05``; null: none)
    and ``eval.abstain`` (default null); a bad value raises a user error naming the key."""
    settings = cfg.get("eval") or {}
    spec = settings.get("operating_point", "fpr@0.05")
    return DeploymentSettings(None if spec is None else parse_operating_point(spec),
                              parse_abstain(settings.get("abstain")))


def diagnostics_settings(cfg: DictConfig) -> DiagnosticsSettings:
    """The diagnostics of a run: ``seed``, ``diagnostics_max_samples``, ``gradcam_images``, ``diagnostics_strict``
    (each optional) and the model and data names for the plot titles."""
    def get(key: str, default):
        value = cfg.get(key, default)
        return default if value is None else value

    defaults = DiagnosticsSettings()
    return DiagnosticsSettings(
        subject=plot_subject((cfg.get("model") or {}).get("name"), (cfg.get("data") or {}).get("name")),
        max_samples=int(get("diagnostics_max_samples", defaults.max_samples)),
        gradcam_images=int(get("gradcam_images", defaults.gradcam_images)),
        seed=int(get("seed", 0) or 0), strict=bool(get("diagnostics_strict", False)))


# -- pretrained weights -----------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _factory(target: str) -> Any:
    """The object ``target`` names, when it owns a weights check (``ensure_weights``); else None."""
    obj = get_object(target)
    return obj if callable(getattr(obj, "ensure_weights", None)) else None


def _weight_nodes(node) -> Iterator[tuple[DictConfig, Any]]:
    """``(node, factory)`` for every node of ``node`` whose ``_target_`` owns a weights check; interpolations
    (a wired copy such as ``net.backbone: ${model.backbone}``) are skipped, so each node is visited once."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            target = node._get_node("_target_")
            if not target._is_interpolation():
                factory = _factory(str(target._value()))
                if factory is not None:
                    yield node, factory
        children = [node._get_node(key) for key in node.keys()]
    elif isinstance(node, ListConfig):
        children = [node._get_node(i) for i in range(len(node))]
    else:
        return
    for child in children:
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_interpolation():
            yield from _weight_nodes(child)


def check_pretrained_weights(model_cfg: DictConfig) -> list[Path]:
    """Fetch (online) or find (offline) every pretrained weights file ``model_cfg`` will load; return them."""
    found = []
    for node, factory in _weight_nodes(model_cfg):
        keys = {k: node[k] for k in node if not str(k).startswith("_")}
        path = factory.ensure_weights(**keys)
        if path is not None:
            found.append(path)
    return found


def without_pretrained_weights(cfg: DictConfig) -> DictConfig:
    """Random initialisation for every weighted node of ``cfg.model`` (in place; returns ``cfg``)."""
    model = cfg.model if "model" in cfg else cfg
    with open_dict(model):
        for node, factory in list(_weight_nodes(model)):
            for key, value in factory.without_weights.items():
                node[key] = value
    return cfg
