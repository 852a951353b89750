"""The contract every CNN detector of the suite follows.

As in timm's ``resnet.py``, feature extraction and the classifier head are
separate: ``forward_features`` gives the penultimate embedding (used for t-SNE and
by Grad-CAM hooks), ``forward_head`` maps it to one logit per image, and
``forward`` chains the two. Inputs are RGB batches in [0, 1]; the detector owns
its own input transform (FFT map, blur, ImageNet normalisation), so the data
pipeline is the same for every detector and every transform runs on the model's
device, batched.
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.backbones import keep_frozen_in_eval
from features.precision import as_unit_float

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetNormalize(nn.Module):
    """Per-channel ImageNet mean/std normalisation for [0, 1] RGB input."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp_head(in_features: int, hidden: int = 128, dropout: float = 0.5) -> nn.Sequential:
    """``Linear(in, hidden) -> ReLU -> Dropout -> Linear(hidden, 1)``, the Synapse-7 head.

    ``hidden=0`` gives a single linear layer.
    """
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, 1))
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, 1)
    )


class Detector(nn.Module):
    """Base class: subclasses implement ``forward_features``; ``self.head`` maps features to one logit."""

    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB, float in [0, 1] (or uint8 0..255, scaled here) -> ``(B,)`` logits."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects RGB batches (B, 3, H, W), got {tuple(x.shape)}")
        return self.forward_head(self.forward_features(as_unit_float(x)))

    def train(self, mode: bool = True) -> "Detector":
        super().train(mode)
        if mode:
            for module in self.modules():
                if module is not self and hasattr(module, "_frozen_modules"):
                    keep_frozen_in_eval(module)
        return self
