"""Gaussian input bottleneck for a spatial stream.

SPECTRAFORGE ("Domain-Equalized Frequency-Spatial Fusion for Synthetic
Dermatology Detection"): the spatial stream sees a Gaussian-blurred image, so
it can only use macroscopic morphology; the fine periodic up-sampling traces
are left to the parallel FFT-magnitude stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from features.batching import check_image_batch, fill_cpu_chunks
from features.precision import autocast_immune


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of length ``2 * ceil(3 * sigma) + 1`` (``sigma > 0``)."""
    if sigma <= 0:
        raise ValueError(f"gaussian_kernel1d needs sigma > 0, got {sigma}")
    radius = math.ceil(3.0 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


class GaussianBottleneck(nn.Module):
    """``(B, C, H, W)`` -> ``(B, C, H, W)`` Gaussian blur, the SPECTRAFORGE spatial bottleneck.

    Args:
        sigma: standard deviation in pixels; ``0`` is the identity. The kernel
            has ``2 * ceil(3 * sigma) + 1`` taps and is applied separably
            (rows, then columns) with reflect padding (OpenCV's ``BORDER_REFLECT_101``),
            as one scaled add of a shifted view per tap: on the CPU this is several
            times faster than a depthwise ``conv2d`` (see ``make bench``).
        in_chans: input channels (3 for RGB).

    ``out_chans`` is the number of output channels, equal to ``in_chans``.
    Images must be larger than the kernel radius ``ceil(3 * sigma)`` on both sides.
    """

    def __init__(self, sigma: float = 1.0, in_chans: int = 3) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"GaussianBottleneck: sigma must be >= 0 (0 = no blur), got {sigma}")
        self.sigma = float(sigma)
        self.in_chans = int(in_chans)
        kernel = gaussian_kernel1d(self.sigma) if self.sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel, persistent=False)
        self._taps = tuple(float(t) for t in kernel.double())  # Python floats: no device sync per call

    @property
    def out_chans(self) -> int:
        return self.in_chans

    @property
    def radius(self) -> int:
        return (self.kernel.numel() - 1) // 2

    @autocast_immune
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, "GaussianBottleneck", self.in_chans)
        if self.sigma == 0:
            return x
        r = self.radius
        if min(x.shape[-2:]) <= r:
            raise ValueError(
                f"GaussianBottleneck: image {tuple(x.shape[-2:])} is too small for sigma={self.sigma} "
                f"(kernel radius {r}); use a smaller sigma or larger images"
            )
        out = torch.empty_like(x)
        fill_cpu_chunks(self._blur_into, x, out)
        return out

    def _blur_into(self, x: torch.Tensor, out: torch.Tensor) -> None:
        r = self.radius
        h, w = x.shape[-2:]
        taps = self._taps
        padded = F.pad(x, (r, r, r, r), mode="reflect")
        # The row pass is scaled by taps[0], so the column pass starts with a plain (autograd-safe) copy
        # into ``out``: out = sum_j (t_j / t_0) * rows_j, rows = t_0 * sum_i t_i * padded_i.
        rows = padded[..., :w] * (taps[0] * taps[0])
        for i, tap in enumerate(taps[1:], start=1):
            rows.add_(padded[..., i : i + w], alpha=tap * taps[0])
        out.copy_(rows[..., :h, :])
        for i, tap in enumerate(taps[1:], start=1):
            out.add_(rows[..., i : i + h, :], alpha=tap / taps[0])

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, in_chans={self.in_chans}, kernel_size={self.kernel.numel()}"
