"""Per-image NumPy / OpenCV references of the ``features/`` maths.

Written the way the papers' pseudo-code reads (Corvi et al. 2023's residual
spectra, Synapse-7's tile loop, SPECTRAFORGE's blur): one image at a time, one
channel or tile at a time, plain ``numpy.fft`` and, where the pseudo-code calls
it, OpenCV's ``filter2D``. They are the straightforward implementations the
batched torch modules replace, used by ``experiments.bench.throughput`` (correctness
check, then timing) and by the tests. The blur has two: the same separable
maths in NumPy (the reference), and OpenCV's SIMD ``GaussianBlur`` (a tuned
library, timed alongside for comparison).

Every function takes one ``(C, H, W)`` float32 image in [0, 1] (the layout of
the torch batches) and returns what the matching torch module returns for a
batch of one, without the batch axis.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from features.bottleneck import gaussian_kernel1d
from features.radial_angular import BIN_EDGE_NUDGE
from features.residual import LAPLACIAN_KERNEL
from features.spectrum import ITU_R_601_WEIGHTS


def grayscale(img: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` -> ``(H, W)`` ITU-R 601 luminance."""
    r, g, b = ITU_R_601_WEIGHTS
    return r * img[0] + g * img[1] + b * img[2]


def centred_fft(x: np.ndarray) -> np.ndarray:
    """2-D FFT with zero frequency moved to the centre."""
    return np.fft.fftshift(np.fft.fft2(x))


def local_patch_fft(img: np.ndarray, patch: int = 32) -> np.ndarray:
    """Synapse-7: for each channel and each ``patch x patch`` tile, ``log(1 + |fftshift(fft2(tile))|)``."""
    c, h, w = img.shape
    out = np.empty_like(img)
    for ch in range(c):
        for top in range(0, h, patch):
            for left in range(0, w, patch):
                tile = img[ch, top:top + patch, left:left + patch]
                out[ch, top:top + patch, left:left + patch] = np.log1p(np.abs(centred_fft(tile)))
    return out


def fft_magnitude(img: np.ndarray, grayscale_input: bool = False, standardize: bool = True,
                  eps: float = 1e-6) -> np.ndarray:
    """SPECTRAFORGE's frequency stream input: per channel ``log(1 + |fftshift(fft2(x))|)``, optionally standardised."""
    planes = [grayscale(img)] if grayscale_input else list(img)
    out = []
    for plane in planes:
        mag = np.log1p(np.abs(centred_fft(plane)))
        if standardize:
            mag = (mag - mag.mean()) / (mag.std(ddof=1) + eps)
        out.append(mag)
    return np.stack(out).astype(np.float32)


def laplacian_residual(img: np.ndarray) -> np.ndarray:
    """Corvi et al.: grayscale image correlated with the 3x3 Laplacian high-pass (``BORDER_REFLECT_101``)."""
    kernel = np.asarray(LAPLACIAN_KERNEL, dtype=np.float32)
    return cv2.filter2D(grayscale(img).astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def residual_spectra(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual, its centred power spectrum ``|F|^2`` and its centred, zero-lag-normalised autocorrelation."""
    res = laplacian_residual(img)
    spec = np.fft.fft2(res)
    power = np.abs(spec) ** 2
    acf = np.real(np.fft.ifft2(power))
    acf = np.fft.fftshift(acf / max(acf[0, 0], 1e-12))
    return res, np.fft.fftshift(power), acf


def frequency_bins(h: int, w: int, n_radial: int, n_angular: int, max_radius: float,
                   exclude_dc: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Flattened radial and angular bin index of every frequency of a centred ``h x w`` spectrum.

    Excluded frequencies (outside ``max_radius``, and DC) get the discard index ``n_radial`` / ``n_angular``.
    Frequencies exactly on a bin edge (e.g. on the diagonals) go to the upper bin, as in the torch module
    (``BIN_EDGE_NUDGE``).
    """
    fy = (np.arange(h) - h // 2) * (2.0 / h)
    fx = (np.arange(w) - w // 2) * (2.0 / w)
    fy, fx = np.meshgrid(fy, fx, indexing="ij")
    radius = np.sqrt(fy ** 2 + fx ** 2)
    inside = radius <= max_radius + 1e-9
    dc = (fy == 0) & (fx == 0)
    keep_r = inside & ~dc if exclude_dc else inside
    r_bin = np.minimum(np.floor(radius / max_radius * n_radial + BIN_EDGE_NUDGE).astype(int), n_radial - 1)
    angle = np.mod(np.arctan2(fy, fx), math.pi)
    a_bin = np.minimum(np.floor(angle * (n_angular / math.pi) + BIN_EDGE_NUDGE).astype(int), n_angular - 1)
    r_bin = np.where(keep_r, r_bin, n_radial)
    a_bin = np.where(inside & ~dc, a_bin, n_angular)
    return r_bin.ravel(), a_bin.ravel()


def radial_angular_histogram(img: np.ndarray, n_radial: int = 64, n_angular: int = 64, use_residual: bool = True,
                             max_radius: float = math.sqrt(2.0), exclude_dc: bool = True,
                             bins: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Corvi et al.: power spectrum summed over radius and orientation bins, each distribution summing to 1.

    ``bins``: precomputed ``frequency_bins`` (default: computed here, for this image).
    """
    plane = laplacian_residual(img) if use_residual else grayscale(img)
    power = (np.abs(centred_fft(plane)) ** 2).ravel()
    h, w = plane.shape
    r_bin, a_bin = bins if bins is not None else frequency_bins(h, w, n_radial, n_angular, max_radius, exclude_dc)
    radial = np.bincount(r_bin, weights=power, minlength=n_radial + 1)[:n_radial]
    angular = np.bincount(a_bin, weights=power, minlength=n_angular + 1)[:n_angular]
    radial /= max(radial.sum(), 1e-12)
    angular /= max(angular.sum(), 1e-12)
    return np.concatenate([radial, angular]).astype(np.float32)


def gaussian_bottleneck(img: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """SPECTRAFORGE's spatial bottleneck in NumPy: per channel, reflect-101 padding, then the separable
    Gaussian as a weighted sum of shifted rows, then of shifted columns."""
    taps = gaussian_kernel1d(sigma).numpy()
    r = len(taps) // 2
    _, h, w = img.shape
    out = np.empty_like(img)
    for ch, plane in enumerate(img):
        padded = np.pad(plane, r, mode="reflect")
        rows = sum(t * padded[:, i:i + w] for i, t in enumerate(taps))
        out[ch] = sum(t * rows[i:i + h, :] for i, t in enumerate(taps))
    return out


def gaussian_bottleneck_opencv(img: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """The same blur with OpenCV: ``GaussianBlur``, kernel ``2 * ceil(3 sigma) + 1``, ``BORDER_REFLECT_101``."""
    k = 2 * math.ceil(3.0 * sigma) + 1
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    blurred = cv2.GaussianBlur(hwc, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return blurred.transpose(2, 0, 1)
