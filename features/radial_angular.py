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

from features.batching import check_image_batch, map_cpu_chunks
from features.precision import autocast_immune
from features.residual import LaplacianResidual
from features.spectrum import hermitian_full, normalized_frequency_grid, rfft_power, to_grayscale


#: Added to a bin coordinate before ``floor``: far above float64 rounding of ``sqrt``/``atan2`` (~1e-14),
#: far below the gap between a grid frequency and a bin edge that it is not on.
BIN_EDGE_NUDGE = 1e-9


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

    Bins are defined on the full centred grid (:meth:`bin_indices`); the power
    is computed and binned on the ``rfft2`` half-plane, each half-plane value
    added to the bins of the one or two full-grid positions it stands for
    (``|F(-k)| = |F(k)|``). Cached bin-index tensors per ``(H, W, device)`` and
    batched ``scatter_add``: no Python loop over images. Differentiable.

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
        self._bin_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}

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
            # + BIN_EDGE_NUDGE: a frequency exactly on a bin edge (the diagonals, say) goes to the upper bin
            # whichever way sqrt/atan2 round, so every platform (and the NumPy reference) bins alike.
            radial = (radius / self.max_radius * self.n_radial + BIN_EDGE_NUDGE).floor().long()
            radial = torch.clamp(radial, max=self.n_radial - 1)
            radial = torch.where(keep_radial, radial, torch.full_like(radial, self.n_radial))
            angle = torch.remainder(torch.atan2(fy, fx), math.pi)
            angular = (angle * (self.n_angular / math.pi) + BIN_EDGE_NUDGE).floor().long()
            angular = torch.clamp(angular, max=self.n_angular - 1)
            angular = torch.where(inside & ~is_dc, angular, torch.full_like(angular, self.n_angular))
            self._bin_cache[key] = (radial.flatten(), angular.flatten())
        return self._bin_cache[key]

    def _half_plane_bins(self, height: int, width: int, device: torch.device | str) -> tuple[torch.Tensor, ...]:
        """The full spectrum's bins moved onto the ``rfft2`` half-plane.

        A half-plane frequency stands for one or two positions of the full centred spectrum (itself and
        its mirror, :func:`hermitian_full`). Returns ``(radial_a, angular_a, radial_b, angular_b)``: the
        bins of the first and of the second position, the discard bin where there is no second one. The
        two usually agree; on the Nyquist row and column, where the full grid labels a frequency and its
        alias differently, they may not.
        """
        key = ("half", int(height), int(width), str(device))
        if key not in self._bin_cache:
            radial, angular = self.bin_indices(height, width, device)
            n_half = height * (width // 2 + 1)
            positions = torch.arange(n_half, device=device, dtype=torch.float64).view(height, width // 2 + 1)
            source = hermitian_full(positions, width).long().flatten()  # full position -> half-plane index
            full = torch.arange(source.numel(), device=device)
            first = torch.full((n_half,), source.numel(), device=device).scatter_reduce(0, source, full, "amin")
            last = torch.full((n_half,), -1, device=device).scatter_reduce(0, source, full, "amax")
            has_mirror = last != first
            self._bin_cache[key] = (
                radial[first], angular[first],
                torch.where(has_mirror, radial[last], self.n_radial),
                torch.where(has_mirror, angular[last], self.n_angular),
            )
        return self._bin_cache[key]

    def _check(self, x: torch.Tensor) -> None:
        check_image_batch(x, "RadialAngularHistogram")

    def _half_spectrum(self, x: torch.Tensor) -> torch.Tensor:
        gray = self.residual(x) if self.residual is not None else to_grayscale(x)
        power = rfft_power(gray[:, 0])
        return torch.log1p(power) if self.log_power else power

    @autocast_immune
    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """The centred ``(B, H, W)`` spectrum that is binned: power (or log power) of the grayscale input/residual."""
        self._check(x)
        return hermitian_full(self._half_spectrum(x), x.shape[-1])

    def _binned(self, values: torch.Tensor, indices: tuple[torch.Tensor, ...], n_bins: int) -> torch.Tensor:
        batch = values.shape[0]
        sums = values.new_zeros(batch, n_bins + 1)
        for index in indices:
            sums = sums.scatter_add(1, index.unsqueeze(0).expand(batch, -1), values)
        sums = sums[:, :n_bins]
        return sums / sums.sum(dim=1, keepdim=True).clamp_min(self.eps)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        power = self._half_spectrum(x)
        batch, height, n_half = power.shape
        radial_a, angular_a, radial_b, angular_b = self._half_plane_bins(height, x.shape[-1], power.device)
        flat = power.reshape(batch, height * n_half)
        radial = self._binned(flat, (radial_a, radial_b), self.n_radial)
        angular = self._binned(flat, (angular_a, angular_b), self.n_angular)
        return torch.cat([radial, angular], dim=1)

    @autocast_immune
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return map_cpu_chunks(self._features, x)

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a ``(B, n_radial + n_angular)`` output into its radial and angular parts."""
        return features[:, : self.n_radial], features[:, self.n_radial :]

    def extra_repr(self) -> str:
        return (
            f"n_radial={self.n_radial}, n_angular={self.n_angular}, use_residual={self.use_residual}, "
            f"log_power={self.log_power}, exclude_dc={self.exclude_dc}, max_radius={self.max_radius:.4g}"
        )
