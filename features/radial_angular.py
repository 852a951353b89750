"""Radial and angular spectral power distributions.

Corvi et al. (2023), "Intriguing properties of synthetic images: from GANs to
diffusion models": synthetic images differ from real ones in how their
spectral power is spread over frequency radius (mid/high-frequency content)
and over orientation; these two 1-D distributions are compact features for a
simple classifier.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from features.residual import LaplacianResidual
from features.spectrum import normalized_frequency_grid, power_spectrum, to_grayscale


class RadialAngularHistogram(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, n_radial + n_angular)`` spectral power distributions.

    The input is converted to grayscale (ITU-R 601; or, with ``use_residual``,
    replaced by its grayscale Laplacian residual), its centred power spectrum
    ``|F|^2`` is taken (``log(1 + |F|^2)`` with ``log_power``), and the power
    is summed into bins:

    * radial bins: the normalised radius ``r = sqrt(fx^2 + fy^2)``, each axis
      scaled so that its Nyquist frequency is 1, is split into ``n_radial``
      equal bins over ``[0, max_radius]``. With the default ``max_radius=1``,
      frequencies with ``r > 1`` (the corners of the spectrum, beyond the Nyquist
      circle) are excluded from both distributions, so every orientation covers the
      same band. ``max_radius=sqrt(2)`` keeps the corners, where the diagonal
      (checkerboard) peaks of transposed-convolution up-sampling lie.
    * angular bins: the orientation ``atan2(fy, fx)`` folded into ``[0, pi)``
      (the spectrum of a real image is point-symmetric) is split into
      ``n_angular`` equal bins. Angle 0 is the horizontal frequency axis
      (patterns varying along image columns); ``fy`` points down the image.

    With ``exclude_dc`` the zero frequency (the image mean, which otherwise
    swamps the first radial bin) is left out; it has no orientation and never
    enters the angular distribution. Each distribution is normalised to sum 1
    (an input with no power outside DC gives zeros).

    Binning uses cached bin-index tensors per ``(H, W, device)`` and a batched
    ``scatter_add``: no Python loop over images. Differentiable.

    ``out_chans`` is the feature length, ``n_radial + n_angular``.
    """

    def __init__(
        self,
        n_radial: int = 64,
        n_angular: int = 64,
        use_residual: bool = False,
        log_power: bool = False,
        exclude_dc: bool = True,
        in_chans: int = 3,
        eps: float = 1e-12,
        max_radius: float = 1.0,
    ) -> None:
        super().__init__()
        if n_radial < 1 or n_angular < 1:
            raise ValueError(f"n_radial and n_angular must be >= 1, got {n_radial} and {n_angular}")
        self.n_radial = int(n_radial)
        self.n_angular = int(n_angular)
        self.use_residual = bool(use_residual)
        self.log_power = bool(log_power)
        self.exclude_dc = bool(exclude_dc)
        self.in_chans = int(in_chans)
        self.eps = float(eps)
        if not 0.0 < max_radius <= math.sqrt(2.0) + 1e-9:
            raise ValueError(f"max_radius must be in (0, sqrt(2)], got {max_radius}")
        self.max_radius = float(max_radius)
        self.residual = LaplacianResidual(grayscale=True, in_chans=in_chans) if use_residual else None
        self._bin_cache: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def out_chans(self) -> int:
        return self.n_radial + self.n_angular

    def bin_indices(self, height: int, width: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened ``(H * W,)`` radial and angular bin indices of a centred spectrum.

        Excluded frequencies get the extra index ``n_radial`` / ``n_angular``
        (a discard bin dropped after summation).
        """
        key = (int(height), int(width), str(device))
        if key not in self._bin_cache:
            fy, fx = normalized_frequency_grid(height, width, device=device)
            radius = torch.sqrt(fy.square() + fx.square())
            inside = radius <= self.max_radius + 1e-9
            is_dc = (fy == 0) & (fx == 0)
            keep_radial = inside & ~is_dc if self.exclude_dc else inside
            radial = torch.clamp((radius / self.max_radius * self.n_radial).floor().long(), max=self.n_radial - 1)
            radial = torch.where(keep_radial, radial, torch.full_like(radial, self.n_radial))
            angle = torch.remainder(torch.atan2(fy, fx), math.pi)
            angular = torch.clamp((angle * (self.n_angular / math.pi)).floor().long(), max=self.n_angular - 1)
            angular = torch.where(inside & ~is_dc, angular, torch.full_like(angular, self.n_angular))
            self._bin_cache[key] = (radial.flatten(), angular.flatten())
        return self._bin_cache[key]

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """The centred ``(B, H, W)`` spectrum that is binned: power (or log power) of the grayscale input/residual."""
        if x.ndim != 4:
            raise ValueError(f"RadialAngularHistogram expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        gray = self.residual(x) if self.residual is not None else to_grayscale(x)
        power = power_spectrum(gray[:, 0])
        return torch.log1p(power) if self.log_power else power

    def _binned(self, values: torch.Tensor, index: torch.Tensor, n_bins: int) -> torch.Tensor:
        batch = values.shape[0]
        sums = values.new_zeros(batch, n_bins + 1)
        sums = sums.scatter_add(1, index.unsqueeze(0).expand(batch, -1), values)[:, :n_bins]
        return sums / sums.sum(dim=1, keepdim=True).clamp_min(self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spectrum(x)
        batch, height, width = spec.shape
        radial_idx, angular_idx = self.bin_indices(height, width, spec.device)
        flat = spec.reshape(batch, height * width)
        radial = self._binned(flat, radial_idx, self.n_radial)
        angular = self._binned(flat, angular_idx, self.n_angular)
        return torch.cat([radial, angular], dim=1)

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a ``(B, n_radial + n_angular)`` output into its radial and angular parts."""
        return features[:, : self.n_radial], features[:, self.n_radial :]

    def extra_repr(self) -> str:
        return (
            f"n_radial={self.n_radial}, n_angular={self.n_angular}, use_residual={self.use_residual}, "
            f"log_power={self.log_power}, exclude_dc={self.exclude_dc}, max_radius={self.max_radius:.4g}"
        )
