"""Neighbouring Pixel Relationships (NPR): the residual of a nearest-neighbour down/up-sampling round trip.

Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative
Network for Generalizable Deepfake Detection", CVPR 2024. The up-sampling layers
of GAN and diffusion decoders make the pixels of each small cell depend on one
another. NPR exposes that local structure:

    NPR(x) = x - up(down(x)),

with ``down`` nearest-neighbour down-sampling by 1/2 and ``up`` nearest-neighbour
up-sampling by 2, as ``F.interpolate(..., mode="nearest")`` computes them in the
authors' reference implementation (github.com/chuangchuangtan/NPR-DeepfakeDetection,
``networks/resnet.py``). PyTorch's nearest mode takes source index ``floor(i * in / out)``,
so down-sampling keeps the top-left pixel of each 2 x 2 cell and up-sampling copies it
back over the cell: NPR is each pixel minus the top-left pixel of its cell, and is zero
at every top-left pixel.
"""

from __future__ import annotations

import torch
from torch import nn

from features.batching import check_image_batch, fill_cpu_chunks
from features.precision import autocast_immune


class NPRResidual(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, C, H, W)`` NPR maps ``x - up(down(x))``.

    Args:
        factor: side of the cells (2 in the paper): nearest down-sampling by ``1/factor``, then up by ``factor``.
        in_chans: channels of the input (3 for RGB); the map has as many (``out_chans``).

    ``H`` and ``W`` must be multiples of ``factor``. Batched: the batch is viewed as
    ``factor x factor`` cells and each cell's top-left pixel is broadcast-subtracted
    from it, with no resampling and no Python loop over images. Differentiable.
    """

    def __init__(self, factor: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        if int(factor) != factor or factor < 2:
            raise ValueError(f"NPRResidual: factor must be an integer >= 2, got {factor}")
        self.factor = int(factor)
        self.in_chans = int(in_chans)

    @property
    def out_chans(self) -> int:
        return self.in_chans

    @autocast_immune
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        out = x.new_empty(x.shape)
        fill_cpu_chunks(self._residual_into, x, out)
        return out

    def _check(self, x: torch.Tensor) -> None:
        check_image_batch(x, "NPRResidual", self.in_chans)
        h, w = x.shape[-2:]
        f = self.factor
        if h % f or w % f:
            raise ValueError(
                f"NPRResidual: input {h}x{w} is not a multiple of the NPR factor {f}; "
                f"set data.crop_size to a multiple of {f}"
            )

    def _residual_into(self, x: torch.Tensor, out: torch.Tensor) -> None:
        b, c, h, w = x.shape
        f = self.factor
        cells = x.reshape(b, c, h // f, f, w // f, f)  # a view for contiguous input
        anchor = cells[:, :, :, :1, :, :1]  # the pixel nearest down-sampling keeps, broadcast over its cell
        out.view(b, c, h // f, f, w // f, f).copy_(cells).sub_(anchor)  # in-place steps (not out=): autograd-safe

    def extra_repr(self) -> str:
        return f"factor={self.factor}, in_chans={self.in_chans}"
