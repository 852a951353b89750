"""SAFE: a small ResNet, trained from scratch, on the Haar DWT's diagonal high-frequency band.

Li et al., "Improving Synthetic Image Detection Towards Generalization: An Image
Transformation Perspective", KDD 2025. SAFE's point is that the training-time image
transformations matter as much as the network: crop instead of resize (resizing
smooths away the local up-sampling traces), ColorJitter, RandomRotation and random
patch masking (``experiments.data.augment.SAFEAugment``), and a frequency input: the
HH sub-band of a one-level DWT of each colour channel (:class:`features.wavelet.HaarDWT`).

The classifier follows the authors' reference implementation
(github.com/Ouxiang-Li/SAFE, ``models/resnet.py``, built as ``resnet50(num_classes=2)`` in
``main_finetune.py``), which is the truncated ResNet-50 of NPR (``detectors.npr``):

* input: the [0, 1] RGB crop, not normalised (their transforms end with ``ToTensor``);
* the HH band of each channel, ``(B, 3, H/2, W/2)``, resized back to ``H x W`` (bilinear), as the reference
  code does after its DWT (``upsample=True``);
* reduced stem: one 3x3 stride-2 convolution to 64 channels, BatchNorm, ReLU, 3x3 stride-2 max-pool;
* ``layer1``: 3 Bottleneck blocks (64 -> 256 channels), ``layer2``: 4 Bottleneck blocks (128 -> 512, stride 2);
* ``layer3`` and ``layer4`` dropped; global average pooling; ``Linear(512, 1)`` (theirs: ``Linear(512, 2)``
  with a two-class cross-entropy, the same decision with one logit and the suite's binary cross-entropy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from detectors.npr import RESNET50_BLOCKS, TruncatedResNetDetector
from features.wavelet import HaarDWT


class SAFEResNet(TruncatedResNetDetector):
    """``HaarDWT (HH of each channel) -> bilinear resize to the input size -> truncated ResNet-50 -> pool -> head``.

    Args:
        bands: DWT sub-bands fed to the stem (SAFE: ``["HH"]``; ``["LH", "HL", "HH"]`` keeps every
            high-frequency band, 9 input channels).
        upsample: resize the ``H/2 x W/2`` bands back to ``H x W`` (bilinear) before the stem, as the reference
            code does; ``false`` feeds them at half size (4x fewer stem operations, a coarser feature map).
        blocks: Bottleneck blocks per kept stage; ``(3, 4)`` = ResNet-50's ``layer1`` and ``layer2``.
        stem_width: channels of the 3x3 stride-2 stem convolution (64).
        head_hidden, dropout: head sizes; ``0, 0.0`` is the reference code's single linear layer.
    """

    cam_name = "dwt"

    def __init__(
        self,
        bands: Sequence[str] = ("HH",),
        upsample: bool = True,
        blocks: Sequence[int] = RESNET50_BLOCKS[:2],
        stem_width: int = 64,
        head_hidden: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dwt = HaarDWT(bands=bands)
        self.upsample = bool(upsample)
        self.build_trunk(self.dwt.out_chans, blocks, stem_width, head_hidden, dropout)

    def bands(self, x: torch.Tensor) -> torch.Tensor:
        """The map the stem sees: the DWT bands, ``(B, 3 * len(bands), H, W)`` (``H/2 x W/2`` without ``upsample``)."""
        maps = self.dwt(x)
        if self.upsample:
            maps = F.interpolate(maps, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        return maps

    input_map = bands
