"""Whole-image FFT log-magnitude spectrum.

SPECTRAFORGE ("Domain-Equalized Frequency-Spatial Fusion for Synthetic
Dermatology Detection"): the frequency stream classifies the centred 2-D FFT
magnitude of the whole image, where the periodic up-sampling artefacts of
diffusion decoders appear as a grid of peaks.
"""

from __future__ import annotations

import torch
from torch import nn

from features.spectrum import fft2d, log_magnitude, to_grayscale


class FFTMagnitude(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, out_chans, H, W)`` centred ``log(1 + |F|)`` maps.

    Args:
        grayscale: transform the ITU-R 601 luminance (``out_chans = 1``) instead
            of each channel (``out_chans = in_chans``).
        standardize: rescale each image's map, channel by channel, to zero mean
            and unit standard deviation.
        in_chans: channels of the input (3 for RGB).

    Zero frequency sits at ``(H // 2, W // 2)``. ``out_chans`` is the number of
    channels of the output map.
    """

    def __init__(self, grayscale: bool = False, standardize: bool = False, in_chans: int = 3,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.grayscale = bool(grayscale)
        self.standardize = bool(standardize)
        self.in_chans = int(in_chans)
        self.eps = float(eps)

    @property
    def out_chans(self) -> int:
        return 1 if self.grayscale else self.in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"FFTMagnitude expects (B, {self.in_chans}, H, W) images, got shape {tuple(x.shape)}; "
                f"set in_chans to match the input"
            )
        if self.grayscale:
            x = to_grayscale(x)
        mag = log_magnitude(fft2d(x))
        if self.standardize:
            mean = mag.mean(dim=(-2, -1), keepdim=True)
            std = mag.std(dim=(-2, -1), keepdim=True)
            mag = (mag - mean) / (std + self.eps)
        return mag.to(x.dtype) if x.is_floating_point() else mag

    def extra_repr(self) -> str:
        return f"grayscale={self.grayscale}, standardize={self.standardize}, in_chans={self.in_chans}"
