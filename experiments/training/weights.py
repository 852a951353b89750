"""Pretrained weights of a model config: checked before training, or switched off.

A factory that loads pretrained weights owns its check: the object a config node's ``_target_`` names
(``detectors.backbones.create_backbone``, ``detectors.clip_probe.CLIPImageFeatures``) carries
``ensure_weights`` (called with the node's keys: fetch the weights, or find them offline, or raise a
:class:`~detectors.backbones.PretrainedWeightsUnavailable` naming the weights and the keys to set) and
``without_weights`` (the keys that mean random initialisation).

:func:`check_pretrained_weights` walks ``cfg.model`` and calls every such node's own check, before any data
are scanned or a run is opened. :func:`without_pretrained_weights` is the one path that turns them off: for
throughput benchmarks, for loading a trained detector (its own weights replace ImageNet's) and for tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, open_dict


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
