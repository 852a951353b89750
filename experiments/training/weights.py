"""Pretrained weights of a model config: checked before training, or switched off.

:func:`check_pretrained_weights` walks ``cfg.model`` and, for every node that builds something with
pretrained weights (a timm backbone, a CLIP encoder), makes sure the weights are at hand: downloaded
now when online, read from the cache offline, or a :class:`~detectors.backbones.PretrainedWeightsUnavailable`
naming the weights and the keys to set, before any data are scanned or a run is opened.
:func:`without_pretrained_weights` turns them off (random initialisation): for throughput benchmarks,
for loading a trained detector (its own weights replace ImageNet's) and for tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, ListConfig, open_dict

#: ``_target_`` of a node with pretrained weights -> the function that fetches or finds them (same keys).
WEIGHT_CHECKS = {
    "detectors.backbones.create_backbone": "detectors.backbones.ensure_weights",
    "detectors.clip_probe.CLIPImageFeatures": "detectors.clip_probe.ensure_weights",
}


def _weight_nodes(node) -> Iterator[DictConfig]:
    """Every node of ``node`` whose ``_target_`` is in :data:`WEIGHT_CHECKS`; interpolations (a wired copy such
    as ``net.backbone: ${model.backbone}``) are skipped, so each node is visited once."""
    if isinstance(node, DictConfig):
        if "_target_" in node and node._get_node("_target_")._value() in WEIGHT_CHECKS:
            yield node
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
    for node in _weight_nodes(model_cfg):
        module, _, fn = WEIGHT_CHECKS[node._target_].rpartition(".")
        keys = {k: node[k] for k in node if not str(k).startswith("_")}
        path = getattr(importlib.import_module(module), fn)(**keys)
        if path is not None:
            found.append(path)
    return found


def without_pretrained_weights(cfg: DictConfig) -> DictConfig:
    """Random initialisation for every weighted node of ``cfg.model`` (in place; returns ``cfg``)."""
    model = cfg.model if "model" in cfg else cfg
    with open_dict(model):
        for node in _weight_nodes(model):
            node.pretrained = None if node._target_.endswith("CLIPImageFeatures") else False
            node.weights_path = None
    return cfg
