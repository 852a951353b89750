"""Whole-image FFT log-magnitude spectrum.

SPECTRAFORGE ("Domain-Equalized Frequency-Spatial Fusion for Synthetic
Dermatology Detection"): the frequency stream classifies the centred 2-D FFT
magnitude of the whole image, where the periodic up-sampling artefacts of
diffusion decoders appear as a grid of peaks.
"""

from __future__ import annotations

import torch
from torch import nn

from features.batching import check_image_batch, fill_cpu_chunks, records_grad
from features.precision import autocast_immune
from features.spectrum import hermitian_full, rfft_log_magnitude, to_grayscale


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

    @autocast_immune
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, "FFTMagnitude", self.in_chans)
        out = x.new_empty(x.shape[0], self.out_chans, *x.shape[-2:])
        fill_cpu_chunks(self._maps_into, x, out)
        return out

    def _maps_into(self, x: torch.Tensor, out: torch.Tensor) -> None:
        if self.grayscale:
            x = to_grayscale(x)
        width = x.shape[-1]
        half = rfft_log_magnitude(x)
        if self.standardize:
            half = self._standardized(half, width)
        hermitian_full(half, width, out=out)

    def _standardized(self, half: torch.Tensor, width: int) -> torch.Tensor:
        """Zero mean, unit (unbiased) std over each full ``H x W`` map, computed on the half-plane
        (in place, unless autograd records through ``half``).

        Column ``l`` of the half-plane stands for itself and, unless it is column 0 or the Nyquist
        column, for its mirror too: sums weight it accordingly, so the statistics are the full map's.
        The sums accumulate in float64 (a 224 x 224 map sums to about 2e5, and the one-pass variance
        subtracts two such sums), with elementwise weights rather than a matmul, which autocast would
        lower to 16 bits.
        """
        n = half.shape[-2] * width
        cols = torch.arange(half.shape[-1], device=half.device)
        weight = torch.where((cols == 0) | (2 * cols == width), 1.0, 2.0).to(torch.float64)
        total = (half.sum(dim=-2, dtype=torch.float64) * weight).sum(dim=-1)
        squares = (half.square().sum(dim=-2, dtype=torch.float64) * weight).sum(dim=-1)
        mean = total / n
        std = ((squares - total * mean) / max(n - 1, 1)).clamp_min(0).sqrt()
        mean = mean.to(half.dtype)[..., None, None]
        scale = (std + self.eps).to(half.dtype)[..., None, None]
        return (half - mean) / scale if records_grad(half) else half.sub_(mean).div_(scale)

    def extra_repr(self) -> str:
        return f"grayscale={self.grayscale}, standardize={self.standardize}, in_chans={self.in_chans}"
