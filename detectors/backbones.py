"""Backbone construction on top of timm, with offline-only pretrained weights.

Every CNN detector gets its trunk from :func:`create_backbone`, so any timm model
name (``resnet34``, ``resnet50``, ``efficientnet_b0``, ``convnext_tiny``, ...)
can be swapped in from the config. The number of input channels follows the
feature in front of it (timm's ``in_chans``), and the trunk returns pooled
features (``num_classes=0``) of size ``backbone.num_features``.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from omegaconf import OmegaConf
from torch import nn
from timm.models import group_parameters


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested but cannot be found offline."""

    user_error = True  # run.py prints the message alone (experiments.errors.is_user_error)


def _weights_help(name: str) -> str:
    return (
        f"ImageNet weights for backbone '{name}' are not available offline.\n"
        f"Provide them in one of two ways:\n"
        f"  1. download a timm/torchvision state dict for '{name}' on a machine with internet, copy it here and run\n"
        f"     with model.backbone.weights_path=/path/to/{name}.pth (or .safetensors);\n"
        f"  2. populate the standard Hugging Face cache (HF_HOME, default ~/.cache/huggingface) by running\n"
        f"     `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` once with internet access.\n"
        f"Or train from scratch with model.backbone.pretrained=false."
    )


def create_backbone(
    name: str,
    in_chans: int = 3,
    pretrained: bool = False,
    weights_path: str | None = None,
    freeze_stages: int = -1,
    **kwargs,
) -> nn.Module:
    """Build a timm trunk that maps ``(B, in_chans, H, W)`` to ``(B, num_features)``.

    Args:
        name: any ``timm.list_models()`` name.
        in_chans: input channels; timm adapts pretrained stem weights when it differs from 3.
        pretrained: load ImageNet weights, from ``weights_path`` or the local cache only (never the network).
        weights_path: a local state dict file (``.pth``/``.bin``/``.safetensors``).
        freeze_stages: -1 freezes nothing; ``k >= 0`` freezes the stem and the first ``k`` stages, following
            timm's ``group_matcher`` (for ResNets, ``1`` freezes ``conv1``/``bn1`` and ``layer1``, as in Synapse-7).
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_rate``).
    """
    kwargs = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in kwargs.items()}
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(
            f"model.backbone.name='{name}' is not a timm model; see timm.list_models() for valid names"
        )
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise PretrainedWeightsUnavailable(
                f"model.backbone.weights_path={weights_path} does not exist.\n" + _weights_help(name)
            )
        model = timm.create_model(
            name, pretrained=True, num_classes=0, in_chans=in_chans,
            pretrained_cfg_overlay={"file": str(path)}, **kwargs,
        )
    elif pretrained:
        previous = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_chans, **kwargs)
        except Exception as err:  # timm raises many types here (OSError, RuntimeError, hub errors)
            raise PretrainedWeightsUnavailable(_weights_help(name)) from err
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    if freeze_stages >= 0:
        freeze_leading_stages(model, freeze_stages)
    return model


def freeze_leading_stages(model: nn.Module, stages: int) -> list[str]:
    """Freeze the stem and the first ``stages`` stages of a timm model; return the frozen parameter names."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    frozen = [n for group in ordered[: stages + 1] for n in group]
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    model._frozen_modules = _modules_of(model, frozen)  # kept in eval mode (BatchNorm statistics stay fixed)
    return frozen


def _modules_of(model: nn.Module, param_names: list[str]) -> list[str]:
    owners = {n.rsplit(".", 1)[0] for n in param_names}
    return sorted(owners)


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Put the modules frozen by :func:`freeze_leading_stages` back in eval mode (call after ``.train()``)."""
    for name in getattr(model, "_frozen_modules", []):
        model.get_submodule(name).eval()


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a plain state dict safely (``weights_only=True``: no pickled code is executed)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
