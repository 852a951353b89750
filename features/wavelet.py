"""The one-level 2-D Haar discrete wavelet transform: its high-frequency sub-bands as image-sized maps.

Li et al., "Improving Synthetic Image Detection Towards Generalization: An Image
Transformation Perspective" (SAFE), KDD 2025, feed a classifier trained from scratch
the diagonal high-frequency sub-band (HH) of a one-level DWT of each colour channel:
the low frequencies carry the image's content, which differs little between real and
generated images, while the finest scale keeps the local artefacts that generator
up-sampling leaves.

Haar (1910): the orthonormal analysis filters are the low-pass ``(1, 1) / sqrt(2)``
and the high-pass ``(1, -1) / sqrt(2)``, applied along the height and along the width
and sampled every second pixel. For each ``2 x 2`` cell with pixels ``[[a, b], [c, d]]``
(``a`` top-left) the four sub-bands are:

    LL = (a + b + c + d) / 2    low along height and width (the approximation)
    LH = (a + b - c - d) / 2    high along height, low along width (PyWavelets' cH, horizontal detail)
    HL = (a - b + c - d) / 2    low along height, high along width (PyWavelets' cV, vertical detail)
    HH = (a - b - c + d) / 2    high along both (PyWavelets' cD, diagonal detail)

with PyWavelets' sign convention (``pywt.dwt2(x, "haar")``: the detail of a pair is first minus second).
The authors' code (github.com/Ouxiang-Li/SAFE, ``models/resnet.py``) calls ``pytorch_wavelets``'
``DWTForward(J=1, wave="bior1.3", mode="symmetric")`` and keeps the HH band; the decomposition high-pass
of ``bior1.3`` is the Haar high-pass, so its HH band is this one away from the image border (where its
symmetric padding adds one or two samples).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from features.batching import check_image_batch
from features.precision import autocast_immune

#: The sub-bands of a one-level 2-D DWT, named (along height)(along width): L = low-pass, H = high-pass.
BANDS = ("LL", "LH", "HL", "HH")
#: Sign of each cell pixel ``(a, b, c, d)`` in each band (each then halved).
_SIGNS = {"LL": (1, 1, 1, 1), "LH": (1, 1, -1, -1), "HL": (1, -1, 1, -1), "HH": (1, -1, -1, 1)}


class HaarDWT(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, C * len(bands), H / 2, W / 2)`` one-level Haar DWT sub-bands.

    Args:
        bands: which sub-bands, in output order: any of ``LL``, ``LH``, ``HL``, ``HH`` (SAFE: ``("HH",)``;
            ``("LH", "HL", "HH")`` keeps every high-frequency band).
        in_chans: channels of the input (3 for RGB); every channel is transformed on its own.

    The output is band-major: channels ``[i * C, (i + 1) * C)`` hold band ``bands[i]`` of the ``C`` input
    channels. ``H`` and ``W`` must be even. Batched (strided views of the four pixels of every ``2 x 2``
    cell, no loop over images), device-agnostic, differentiable; computed in float32 under any autocast.
    """

    def __init__(self, bands: Sequence[str] = ("HH",), in_chans: int = 3) -> None:
        super().__init__()
        bands = tuple(str(b).upper() for b in ([bands] if isinstance(bands, str) else bands))
        unknown = [b for b in bands if b not in BANDS]
        if not bands or unknown or len(set(bands)) != len(bands):
            raise ValueError(f"HaarDWT: bands must be distinct names among {list(BANDS)}, got {list(bands)}")
        self.bands = bands
        self.in_chans = int(in_chans)

    @property
    def out_chans(self) -> int:
        return self.in_chans * len(self.bands)

    @autocast_immune
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, "HaarDWT", self.in_chans)
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(f"HaarDWT: input {h}x{w} has an odd side; the Haar DWT takes 2x2 cells: "
                             f"set data.crop_size to an even number")
        cell = (x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2])
        maps = []
        for band in self.bands:
            signs = _SIGNS[band]
            total = cell[0]
            for sign, pixel in zip(signs[1:], cell[1:]):
                total = total + pixel if sign > 0 else total - pixel
            maps.append(total * 0.5)
        return maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)

    def extra_repr(self) -> str:
        return f"bands={list(self.bands)}, in_chans={self.in_chans}"
