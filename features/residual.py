"""Laplacian high-pass noise residuals and their spectra.

Corvi et al. (2023), "Intriguing properties of synthetic images: from GANs to
diffusion models": the image content is suppressed with a 3x3 high-pass
filter, and the power spectrum and autocorrelation of the resulting noise
residual expose the periodic fingerprints that generator up-sampling leaves
behind (peaks in the spectrum, a grid in the autocorrelation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from features.batching import check_image_batch, fill_cpu_chunks
from features.precision import autocast_immune
from features.spectrum import autocorrelation, power_and_autocorrelation, power_spectrum, to_grayscale

#: 3x3 Laplacian-like high-pass kernel; it sums to zero, so flat regions give a zero residual.
LAPLACIAN_KERNEL: tuple[tuple[float, ...], ...] = (
    (-1.0, -1.0, -1.0),
    (-1.0, 8.0, -1.0),
    (-1.0, -1.0, -1.0),
)


class LaplacianResidual(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, out_chans, H, W)`` high-pass noise residuals.

    The residual is the correlation of the image with :data:`LAPLACIAN_KERNEL`,
    with reflect padding (``x[-1] = x[1]``, OpenCV's ``BORDER_REFLECT_101``),
    so the output has the input's size. It is computed in the equivalent
    separable form ``9 x - (3 x 3 box sum of x)``: four shifted adds instead of
    a nine-tap depthwise convolution.

    Args:
        grayscale: convert RGB to ITU-R 601 luminance first (``out_chans = 1``);
            otherwise filter each channel separately (``out_chans = in_chans``).
        in_chans: channels of the input (3 for RGB).

    ``out_chans`` is the number of channels of the output map.
    """

    def __init__(self, grayscale: bool = True, in_chans: int = 3) -> None:
        super().__init__()
        self.grayscale = bool(grayscale)
        self.in_chans = int(in_chans)

    @property
    def out_chans(self) -> int:
        return 1 if self.grayscale else self.in_chans

    @autocast_immune
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        out = self._empty_map(x)
        fill_cpu_chunks(self._residual_into, x, out)
        return out

    def _empty_map(self, x: torch.Tensor) -> torch.Tensor:
        """An uninitialised ``(B, out_chans, H, W)`` map in ``x``'s (already float) dtype."""
        return x.new_empty(x.shape[0], self.out_chans, *x.shape[-2:])

    def _check(self, x: torch.Tensor) -> None:
        check_image_batch(x, "LaplacianResidual", self.in_chans)
        if x.shape[-2] < 2 or x.shape[-1] < 2:
            raise ValueError(f"LaplacianResidual needs images of at least 2x2 pixels, got {tuple(x.shape[-2:])}")

    def _residual_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the residual of ``x`` into ``out`` (``(B, out_chans, H, W)``) and return ``out``."""
        if self.grayscale:
            x = to_grayscale(x)
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        rows = (padded[..., : w] + padded[..., 1 : w + 1]).add_(padded[..., 2 : w + 2])
        box = (rows[..., :h, :] + rows[..., 1 : h + 1, :]).add_(rows[..., 2 : h + 2, :])
        return out.copy_(x).mul_(9.0).sub_(box)  # in-place steps (not out=): autograd-safe

    @autocast_immune
    def power_spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Centred power spectrum ``|F(r)|^2`` of the residual ``r = self(x)``, shape ``(B, out_chans, H, W)``."""
        return power_spectrum(self(x))

    @autocast_immune
    def autocorrelation(self, x: torch.Tensor) -> torch.Tensor:
        """Centred, zero-lag-normalised circular autocorrelation of the residual (see ``spectrum.autocorrelation``)."""
        return autocorrelation(self(x))

    @autocast_immune
    def spectra(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(residual, power_spectrum, autocorrelation)`` of ``x``, the spectra sharing one FFT.

        Corvi et al.'s analysis maps, each ``(B, out_chans, H, W)``, computed slice by slice on the CPU.
        """
        def maps_into(part: torch.Tensor, residual: torch.Tensor, power: torch.Tensor, acf: torch.Tensor) -> None:
            power_and_autocorrelation(self._residual_into(part, residual), out=(power, acf))

        self._check(x)
        maps = tuple(self._empty_map(x) for _ in range(3))
        fill_cpu_chunks(maps_into, x, *maps)
        return maps

    def extra_repr(self) -> str:
        return f"grayscale={self.grayscale}, in_chans={self.in_chans}"


def laplacian_residual(x: torch.Tensor, grayscale: bool = True) -> torch.Tensor:
    """Functional form of :class:`LaplacianResidual` for ``(B, C, H, W)`` inputs."""
    return LaplacianResidual(grayscale=grayscale, in_chans=x.shape[1])(x)
