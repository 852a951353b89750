"""Shared spectral helpers used by every FFT-based feature in the suite.

The power spectrum and autocorrelation of noise residuals follow Corvi et al.
(2023), "Intriguing properties of synthetic images: from GANs to diffusion
models" (CVPR Workshops): residuals are Fourier-transformed, their squared
magnitude is shown centred (``fftshift``), and the autocorrelation is the
inverse transform of that power spectrum (Wiener-Khinchin theorem).

All helpers act on the last two dimensions of a tensor of any leading shape,
so they are batched and device-agnostic. Integer or half-precision inputs are
promoted to float32; float64 stays float64.
"""

from __future__ import annotations

import torch

#: ITU-R BT.601 luma weights (R, G, B), as used by PIL's ``convert("L")`` and OpenCV.
ITU_R_601_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def log_magnitude(spectrum: torch.Tensor) -> torch.Tensor:
    """``log(1 + |F|)``: the log-magnitude used by every FFT feature of the suite."""
    return torch.log1p(spectrum.abs())


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB -> ``(B, 1, H, W)`` luminance with ITU-R BT.601 weights.

    A single-channel input is returned unchanged. Any other channel count raises.
    """
    if x.ndim != 4:
        raise ValueError(f"to_grayscale expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if channels == 1:
        return x
    if channels != 3:
        raise ValueError(
            f"to_grayscale expects 1 or 3 channels, got {channels}; pass RGB images in (B, 3, H, W) layout"
        )
    weights = torch.tensor(ITU_R_601_WEIGHTS, dtype=x.dtype if x.is_floating_point() else torch.float32,
                           device=x.device)
    return (x * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def fft2d(x: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """2-D FFT over the last two dimensions, zero frequency moved to the centre if ``shift``.

    With ``shift`` the zero frequency of an ``N``-long axis sits at index ``N // 2``
    and the Nyquist frequency (for even ``N``) at index 0.
    """
    x = _as_float(x)
    h, w = x.shape[-2:]
    if shift and h % 2 == 0 and w % 2 == 0:
        # For even sizes, fftshift(F(x)) == F(x * (-1)^(i+j)): a real multiply instead of a complex roll.
        return torch.fft.fft2(x * _checkerboard(h, w, x.dtype, x.device), dim=(-2, -1))
    spec = torch.fft.fft2(x, dim=(-2, -1))
    if shift:
        spec = torch.fft.fftshift(spec, dim=(-2, -1))
    return spec


def _checkerboard(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    i = torch.arange(h, device=device).view(-1, 1)
    j = torch.arange(w, device=device).view(1, -1)
    return (1 - 2 * ((i + j) % 2)).to(dtype)


def power_spectrum(x: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """Centred power spectrum ``|F(x)|^2`` over the last two dimensions (unnormalised DFT)."""
    return fft2d(x, shift=shift).abs().square()


def autocorrelation(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Circular autocorrelation over the last two dimensions, zero lag centred and equal to 1.

    Computed as the inverse FFT of the power spectrum (Wiener-Khinchin), then
    ``fftshift``-ed so that lag ``(0, 0)`` sits at ``(H // 2, W // 2)``; lag
    ``(dy, dx)`` is at ``(H // 2 + dy, W // 2 + dx)``. Each map is divided by
    its zero-lag value (the signal energy); an all-zero input gives an all-zero map.
    The mean is not removed: pass a residual (zero-mean in practice) or subtract it first.
    """
    power = power_spectrum(x, shift=False)
    acf = torch.fft.ifft2(power, dim=(-2, -1)).real
    zero_lag = acf[..., :1, :1]
    acf = torch.fft.fftshift(acf, dim=(-2, -1))
    return acf / zero_lag.clamp_min(eps)


def normalized_frequency_grid(
    height: int, width: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequencies of a centred ``height x width`` spectrum, each axis scaled so Nyquist = 1.

    Returns ``(fy, fx)``, each ``(height, width)`` float64: ``fy[i, j] = 2 (i - height // 2) / height``
    (cycles per pixel divided by the Nyquist frequency 0.5), and likewise ``fx`` along columns.
    ``fy`` grows downwards, with the image's row index.
    """
    fy = (torch.arange(height, device=device, dtype=torch.float64) - height // 2) * (2.0 / height)
    fx = (torch.arange(width, device=device, dtype=torch.float64) - width // 2) * (2.0 / width)
    return torch.meshgrid(fy, fx, indexing="ij")
