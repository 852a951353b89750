"""NPR: a small ResNet, trained from scratch, on Neighbouring Pixel Relationships.

Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative
Network for Generalizable Deepfake Detection", CVPR 2024. The image's NPR map
``x - up(down(x))`` (nearest-neighbour, factor 2; :class:`features.npr.NPRResidual`)
keeps only the local pixel dependencies that generator up-sampling leaves, and a
ResNet-50-style classifier trained from scratch sees nothing else.

The classifier follows the authors' reference implementation
(github.com/chuangchuangtan/NPR-DeepfakeDetection, ``networks/resnet.py``): a
ResNet-50 kept only up to ``layer2``, because the artefact is local and a deep,
wide receptive field is not needed:

* input: ImageNet mean/std normalisation, then NPR (factor 2), multiplied by 2/3;
* reduced stem: one 3x3 stride-2 convolution to 64 channels (ResNet-50 has a 7x7 one),
  BatchNorm, ReLU, 3x3 stride-2 max-pool;
* ``layer1``: 3 Bottleneck blocks, width 64 -> 256 channels, stride 1;
* ``layer2``: 4 Bottleneck blocks, width 128 -> 512 channels, stride 2 (ResNet v1.5: on the 3x3 conv);
* ``layer3`` and ``layer4`` of ResNet-50 are dropped; global average pooling; ``Linear(512, 1)``.

The blocks are torchvision's ``Bottleneck``; weights are initialised as torchvision's
ResNet does (Kaiming-normal convolutions, BatchNorm at 1 / 0). The feature map of
``layer2`` has stride 8, so its Grad-CAM lands on image coordinates.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from detectors.base import Detector, ImageNetNormalize, mlp_head
from features.npr import NPRResidual

#: Bottleneck blocks of ResNet-50's four stages; NPR keeps the first two.
RESNET50_BLOCKS = (3, 4, 6, 3)


def bottleneck_stage(in_chans: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` torchvision Bottlenecks of inner ``width`` (``4 * width`` out), the first with ``stride``
    and a 1x1 projection shortcut when the shape changes, as in ResNet-50's ``layerN``."""
    out_chans = width * Bottleneck.expansion
    shortcut = None
    if stride != 1 or in_chans != out_chans:
        shortcut = nn.Sequential(
            nn.Conv2d(in_chans, out_chans, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_chans)
        )
    layers = [Bottleneck(in_chans, width, stride=stride, downsample=shortcut)]
    layers += [Bottleneck(out_chans, width) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def truncated_resnet50(in_chans: int, blocks: Sequence[int], stem_width: int = 64) -> tuple[nn.Sequential, nn.Sequential, int]:
    """``(stem, stages, out_chans)`` of a ResNet-50 kept up to ``len(blocks)`` stages, as NPR and SAFE use it.

    The stem is one 3x3 stride-2 convolution from ``in_chans`` to ``stem_width`` channels, BatchNorm, ReLU and a
    3x3 stride-2 max-pool; stage ``i`` (``layer{i+1}``) holds ``blocks[i]`` Bottlenecks of inner width
    ``stem_width * 2**i``, with stride 2 except the first. :func:`init_resnet_weights` initialises them.
    """
    blocks = [int(b) for b in blocks]
    if not 1 <= len(blocks) <= len(RESNET50_BLOCKS) or min(blocks) < 1:
        raise ValueError(f"model.net.blocks must hold 1 to 4 positive block counts, got {blocks}")
    stem = nn.Sequential(
        nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    chans = stem_width
    for i, n in enumerate(blocks):
        width = stem_width * 2**i
        stages[f"layer{i + 1}"] = bottleneck_stage(chans, width, n, stride=1 if i == 0 else 2)
        chans = width * Bottleneck.expansion
    return stem, nn.Sequential(stages), chans


def init_resnet_weights(module: nn.Module) -> None:
    """Initialise ``module``'s convolutions and BatchNorms as torchvision's ResNet does (Kaiming-normal, 1 / 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class TruncatedResNetDetector(Detector):
    """An input map (``input_map``: the image's NPR, its DWT bands, ...) -> :func:`truncated_resnet50` -> global
    average pooling -> head; the last kept stage is the Grad-CAM layer, named :attr:`cam_name`. A subclass sets
    its input modules, then calls :meth:`build_trunk` with their channel count."""

    #: the key of :meth:`cam_layers`
    cam_name = "input"

    def build_trunk(self, in_chans: int, blocks: Sequence[int], stem_width: int, head_hidden: int,
                    dropout: float) -> None:
        """The stem, stages, pooling and head, initialised as torchvision's ResNet (:func:`init_resnet_weights`)."""
        self.stem, self.stages, self.num_features = truncated_resnet50(in_chans, blocks, stem_width)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = mlp_head(self.num_features, head_hidden, dropout)
        init_resnet_weights(self)

    def input_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(self.input_map(x))))

    def cam_layers(self) -> dict[str, nn.Module]:
        return {self.cam_name: self.stages[-1]}


class NPRResNet(TruncatedResNetDetector):
    """``ImageNet normalisation -> NPRResidual -> x residual_scale -> truncated ResNet-50 -> pool -> head``.

    Args:
        factor: NPR cell size (2 in the paper); ``data.crop_size`` must be a multiple of it.
        normalize_input: ImageNet mean/std normalisation before NPR, as the reference preprocessing does
            (NPR is then divided by each channel's std; the mean cancels).
        residual_scale: constant the NPR map is multiplied by before the stem (2/3 in the reference code;
            the BatchNorm after the first convolution makes it nearly immaterial).
        blocks: Bottleneck blocks per kept stage; ``(3, 4)`` = ResNet-50's ``layer1`` and ``layer2``.
            Stage ``i`` has inner width ``stem_width * 2**i`` and stride 2 except the first.
        stem_width: channels of the 3x3 stride-2 stem convolution (64).
        head_hidden, dropout: head sizes; ``0, 0.0`` is the paper's single ``Linear(512, 1)``.
    """

    cam_name = "npr"

    def __init__(
        self,
        factor: int = 2,
        normalize_input: bool = True,
        residual_scale: float = 2.0 / 3.0,
        blocks: Sequence[int] = RESNET50_BLOCKS[:2],
        stem_width: int = 64,
        head_hidden: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.normalize = ImageNetNormalize() if normalize_input else nn.Identity()
        self.npr = NPRResidual(factor=factor)
        self.residual_scale = float(residual_scale)
        self.build_trunk(self.npr.out_chans, blocks, stem_width, head_hidden, dropout)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled NPR map the stem sees, ``(B, 3, H, W)``."""
        return self.npr(self.normalize(x)) * self.residual_scale

    input_map = residual
