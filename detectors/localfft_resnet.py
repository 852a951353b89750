"""ResNet-34 on local patch-wise FFT log-magnitude maps.

Synapse-7, "AI-Generated Image Detection using Frequency Domain Analysis": every
32x32 patch of the (ImageNet-normalised) image is replaced by its log-magnitude
spectrum, and a ResNet-34 whose stem and ``layer1`` are frozen classifies the
stitched map with a ``512 -> 128 -> 1`` head.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from detectors.base import Detector, ImageNetNormalize, mlp_head
from detectors.streams import last_stage
from features.local_fft import LocalPatchFFT


class LocalFFTResNet(Detector):
    """``LocalPatchFFT -> timm backbone -> MLP head``.

    Args:
        backbone: a callable ``(in_chans) -> nn.Module`` (``detectors.backbones.create_backbone`` as a Hydra partial).
        patch_size: LocalPatchFFT tile size.
        normalize_input: apply ImageNet normalisation before the FFT, as the Synapse-7 preprocessing does.
        head_hidden, dropout: head sizes (Synapse-7: 128, 0.5).
    """

    def __init__(
        self,
        backbone: Callable[..., nn.Module],
        patch_size: int = 32,
        normalize_input: bool = True,
        head_hidden: int = 128,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.normalize = ImageNetNormalize() if normalize_input else nn.Identity()
        self.local_fft = LocalPatchFFT(patch_size=patch_size)
        self.backbone = backbone(in_chans=self.local_fft.out_chans)
        self.head = mlp_head(self.backbone.num_features, head_hidden, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.local_fft(self.normalize(x)))

    def cam_layers(self) -> dict[str, nn.Module]:
        return {"localfft": last_stage(self.backbone)}
