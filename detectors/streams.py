"""Spatial and frequency streams, and the detectors built from them.

SPECTRAFORGE ("Domain-Equalized Frequency-Spatial Fusion for Synthetic
Dermatology Detection") decouples detection into a Gaussian-bottlenecked
spatial stream, which sees macroscopic morphology but not the pixel-level
noise, and an FFT-magnitude stream, which sees the periodic up-sampling
artefacts of generator decoders. Their pooled features are concatenated and
fused by an MLP. The same streams give the single-stream baselines of its
results table: EfficientNet-B0 on pixels (``SpatialCNN``) and ResNet-50 on the
FFT alone (``FrequencyCNN``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from detectors.base import Detector, ImageNetNormalize, mlp_head
from features.bottleneck import GaussianBottleneck
from features.fft_magnitude import FFTMagnitude


def last_stage(backbone: nn.Module) -> nn.Module:
    """The deepest feature stage of a timm backbone (the usual Grad-CAM target)."""
    return backbone.get_submodule(backbone.feature_info[-1]["module"])


class SpatialStream(nn.Module):
    """``GaussianBottleneck(sigma) -> ImageNet normalisation -> backbone``; ``sigma=0`` sees raw pixels."""

    def __init__(self, backbone: Callable[..., nn.Module], blur_sigma: float = 0.0) -> None:
        super().__init__()
        self.bottleneck = GaussianBottleneck(sigma=blur_sigma)
        self.normalize = ImageNetNormalize()
        self.backbone = backbone(in_chans=self.bottleneck.out_chans)
        self.num_features = self.backbone.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(self.bottleneck(x)))


class FrequencyStream(nn.Module):
    """``FFTMagnitude`` (centred log-magnitude of the whole image) ``-> backbone``."""

    def __init__(self, backbone: Callable[..., nn.Module], grayscale: bool = False, standardize: bool = True) -> None:
        super().__init__()
        self.fft = FFTMagnitude(grayscale=grayscale, standardize=standardize)
        self.backbone = backbone(in_chans=self.fft.out_chans)
        self.num_features = self.backbone.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.fft(x))


class SpectraForgeDual(Detector):
    """SPECTRAFORGE: spatial and frequency streams (ResNet-50 each), concatenated, fused by an MLP head.

    Each stream is reachable on its own (``forward_spatial``, ``forward_frequency``)
    and exposes its last stage for per-stream Grad-CAM (``cam_layers``).
    """

    def __init__(
        self,
        backbone: Callable[..., nn.Module],
        blur_sigma: float = 1.5,
        fft_grayscale: bool = False,
        fft_standardize: bool = True,
        head_hidden: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.spatial = SpatialStream(backbone, blur_sigma)
        self.frequency = FrequencyStream(backbone, fft_grayscale, fft_standardize)
        self.head = mlp_head(self.spatial.num_features + self.frequency.num_features, head_hidden, dropout)

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(x)

    def forward_frequency(self, x: torch.Tensor) -> torch.Tensor:
        return self.frequency(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.spatial(x), self.frequency(x)], dim=1)

    def cam_layers(self) -> dict[str, nn.Module]:
        return {"spatial": last_stage(self.spatial.backbone), "frequency": last_stage(self.frequency.backbone)}


class SpatialCNN(Detector):
    """A spatial baseline: a timm backbone on ImageNet-normalised pixels (EfficientNet-B0 in SPECTRAFORGE)."""

    def __init__(self, backbone: Callable[..., nn.Module], blur_sigma: float = 0.0, head_hidden: int = 0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.spatial = SpatialStream(backbone, blur_sigma)
        self.head = mlp_head(self.spatial.num_features, head_hidden, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(x)

    def cam_layers(self) -> dict[str, nn.Module]:
        return {"spatial": last_stage(self.spatial.backbone)}


class FrequencyCNN(Detector):
    """The frequency stream alone (ResNet-50 on the FFT magnitude, SPECTRAFORGE's "frequency-only" row)."""

    def __init__(self, backbone: Callable[..., nn.Module], fft_grayscale: bool = False, fft_standardize: bool = True,
                 head_hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        self.frequency = FrequencyStream(backbone, fft_grayscale, fft_standardize)
        self.head = mlp_head(self.frequency.num_features, head_hidden, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.frequency(x)

    def cam_layers(self) -> dict[str, nn.Module]:
        return {"frequency": last_stage(self.frequency.backbone)}
