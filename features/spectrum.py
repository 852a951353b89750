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

import functools

import torch

from features.batching import records_grad
from features.precision import as_feature_float

#: ITU-R BT.601 luma weights (R, G, B), as used by PIL's ``convert("L")`` and OpenCV.
ITU_R_601_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


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
    x = x if x.is_floating_point() else x.float()
    r, g, b = ITU_R_601_WEIGHTS
    return (x[:, 0:1] * r).add_(x[:, 1:2], alpha=g).add_(x[:, 2:3], alpha=b)


def rfft_power(x: torch.Tensor) -> torch.Tensor:
    """``|F(x)|^2`` on the half-plane of ``rfft2``: shape ``(..., H, W // 2 + 1)``, zero frequency at ``[0, 0]``.

    For a real input the other half follows from ``|F(-k)| = |F(k)|`` (see :func:`hermitian_full`), so
    the transform and every elementwise step after it touch half the data of a full ``fft2``.
    """
    spec = torch.fft.rfft2(as_feature_float(x), dim=(-2, -1))
    return spec.real.square().addcmul_(spec.imag, spec.imag)


def _roll_rows_into(dst: torch.Tensor, src: torch.Tensor, shift: int) -> None:
    """``dst[..., i, :] = src[..., (i - shift) % H, :]`` (``torch.roll`` along rows, written in place)."""
    h = src.shape[-2]
    s = shift % h
    if s == 0:
        dst.copy_(src)
        return
    dst[..., s:, :].copy_(src[..., : h - s, :])
    dst[..., :s, :].copy_(src[..., h - s :, :])


def hermitian_full(half: torch.Tensor, width: int, shift: bool = True,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Expand a point-symmetric map on the ``rfft2`` half-plane ``(..., H, W // 2 + 1)`` to ``(..., H, W)``.

    ``half`` holds ``f(F)`` for a real input and any ``f`` of the magnitude (power, ``log(1 + |F|)``), which
    satisfies ``m[-k, -l] = m[k, l]``; the missing columns are the mirrored existing ones. With ``shift``
    the result is ``fftshift``-ed (zero frequency at ``(H // 2, W // 2)``). Any ``H`` and ``W``, odd too.
    ``out``: a ``(..., H, W)`` tensor (a strided view is fine) to write the result into.
    """
    h = half.shape[-2]
    if out is None:
        out = half.new_empty(*half.shape[:-1], width)
    if shift:
        m = width // 2  # centred columns [0, m) mirror columns m..1; [m, W) are columns 0..W-m-1
        _roll_rows_into(out[..., :m], half[..., 1 : m + 1].flip(-2, -1), h // 2 + 1)
        _roll_rows_into(out[..., m:], half[..., : width - m], h // 2)
    else:
        n = width // 2 + 1  # columns [0, n) as computed; [n, W) mirror columns W-n..1 with rows negated
        out[..., :n].copy_(half[..., :n])
        _roll_rows_into(out[..., n:], half[..., 1 : width - n + 1].flip(-2, -1), 1)
    return out


def rfft_log_magnitude(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + |F(x)|)`` on the ``rfft2`` half-plane: the log-magnitude used by every FFT feature of the suite.

    Expand it with :func:`hermitian_full` (after any per-map step that is cheaper on half the data).
    Computed as ``log(1 + |F|)`` in place: torch's CPU ``log1p`` is several times slower than ``log``,
    and for ``|F| >= 0`` the two differ by at most one float ulp of ``1`` (about ``1.2e-7``).
    """
    magnitude = rfft_power(x).sqrt_()
    return (magnitude + 1.0).log_() if records_grad(magnitude) else magnitude.add_(1.0).log_()


def log_magnitude_spectrum(x: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """``log(1 + |F(x)|)`` over the last two dimensions, zero frequency centred if ``shift``.

    With ``shift`` the zero frequency of an ``N``-long axis sits at index ``N // 2`` and the Nyquist
    frequency (for even ``N``) at index 0.
    """
    return hermitian_full(rfft_log_magnitude(x), x.shape[-1], shift=shift)


def power_spectrum(x: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """Centred power spectrum ``|F(x)|^2`` over the last two dimensions (unnormalised DFT)."""
    return hermitian_full(rfft_power(x), x.shape[-1], shift=shift)


def _autocorrelation_from_power(half_power: torch.Tensor, size: tuple[int, int], eps: float,
                                out: torch.Tensor | None = None) -> torch.Tensor:
    h, w = size
    if h % 2 == 0 and w % 2 == 0:
        # For even sizes, fftshift of the inverse transform == inverse transform of the spectrum times
        # (-1)^(k + l): a sign flip on the half-plane instead of a roll of the full map.
        acf = torch.fft.irfft2(half_power * _checkerboard(h, w // 2 + 1, half_power), s=size, dim=(-2, -1))
        zero_lag = acf[..., h // 2 : h // 2 + 1, w // 2 : w // 2 + 1]
    else:
        acf = torch.fft.irfft2(half_power, s=size, dim=(-2, -1))
        zero_lag = acf[..., :1, :1]
        acf = torch.fft.fftshift(acf, dim=(-2, -1))
    acf = acf / zero_lag.clamp_min(eps)
    return acf if out is None else out.copy_(acf)


def _checkerboard(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """``(-1)^(i + j)`` on an ``h x w`` grid, with ``like``'s dtype and device."""
    return _checkerboard_cached(h, w, like.dtype, like.device)


@functools.lru_cache(maxsize=32)
def _checkerboard_cached(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    i = torch.arange(h, device=device).view(-1, 1)
    j = torch.arange(w, device=device).view(1, -1)
    return (1 - 2 * ((i + j) % 2)).to(dtype)


def autocorrelation(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Circular autocorrelation over the last two dimensions, zero lag centred and equal to 1.

    Computed as the inverse FFT of the power spectrum (Wiener-Khinchin), then
    ``fftshift``-ed so that lag ``(0, 0)`` sits at ``(H // 2, W // 2)``; lag
    ``(dy, dx)`` is at ``(H // 2 + dy, W // 2 + dx)``. Each map is divided by
    its zero-lag value (the signal energy); an all-zero input gives an all-zero map.
    The mean is not removed: pass a residual (zero-mean in practice) or subtract it first.
    """
    return _autocorrelation_from_power(rfft_power(x), tuple(x.shape[-2:]), eps)


def power_and_autocorrelation(x: torch.Tensor, eps: float = 1e-12,
                              out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(power_spectrum(x), autocorrelation(x))`` from one forward FFT (Corvi et al.'s residual analysis).

    ``out``: two tensors of ``x``'s shape to write the maps into.
    """
    half = rfft_power(x)
    power_out, acf_out = (None, None) if out is None else out
    return (hermitian_full(half, x.shape[-1], out=power_out),
            _autocorrelation_from_power(half, tuple(x.shape[-2:]), eps, out=acf_out))


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
