"""Figures of spectral analysis (Corvi et al. 2023): mean power spectra, autocorrelations and radial /
angular profiles per group (``task=analyze``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.evaluation.plotting import saved_figure, to_numpy


def _robust_limits(image: np.ndarray, exclude_centre: bool = False) -> tuple[float, float]:
    values = image.astype(np.float64)
    if exclude_centre:
        mask = np.ones_like(values, dtype=bool)
        mask[values.shape[0] // 2, values.shape[1] // 2] = False
        values = values[mask]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1, 99])
    return (float(low), float(high)) if high > low else (float(low), float(low) + 1e-12)


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape
    size_y, size_x = min(size, height), min(size, width)
    top = height // 2 - size_y // 2
    left = width // 2 - size_x // 2
    return image[top:top + size_y, left:left + size_x]


def plot_spectral_analysis(
    stats: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    log_power: bool = True,
    autocorr_crop: int = 32,
    angular_range_deg: float = 180.0,
) -> str | Path:
    """Fingerprint figure in the style of Corvi et al. (2023), "Intriguing properties of synthetic images".

    One row per key of ``stats`` (a class or a generator); columns: the mean power
    spectrum of the noise residual (centred, shown as ``log10`` unless ``log_power`` is
    False because it already is), the mean autocorrelation (central ``autocorr_crop``
    pixels, zero lag in the middle), the radial profile (radius normalised so that
    Nyquist = 1) and the angular profile (bins spanning ``angular_range_deg``).
    ``stats[key]`` holds ``power_spectrum`` (H, W), ``autocorrelation`` (H, W),
    ``radial`` (R,) and ``angular`` (A,). Colour limits are robust percentiles, with
    the zero-lag peak of the autocorrelation left out.
    """
    keys = list(stats)
    if not keys:
        raise ValueError("plot_spectral_analysis needs at least one entry in stats")
    with saved_figure(path, (13.0, 3.0 * len(keys)), layout="constrained") as fig:
        axes = fig.subplots(len(keys), 4, squeeze=False)
        for row, key in enumerate(keys):
            entry = stats[key]
            power = to_numpy(entry["power_spectrum"]).astype(np.float64)
            if log_power:
                power = np.log10(np.maximum(power, 0.0) + 1e-12)
            autocorr = _centre_crop(to_numpy(entry["autocorrelation"]).astype(np.float64), autocorr_crop)
            radial = to_numpy(entry["radial"]).astype(np.float64).reshape(-1)
            angular = to_numpy(entry["angular"]).astype(np.float64).reshape(-1)

            ax_power, ax_acf, ax_radial, ax_angular = axes[row]
            low, high = _robust_limits(power)
            image = ax_power.imshow(power, cmap="magma", vmin=low, vmax=high)
            fig.colorbar(image, ax=ax_power, fraction=0.046)
            ax_power.set_title(f"{key}: mean {'log10 ' if log_power else ''}power spectrum", fontsize=9)
            ax_power.set_axis_off()

            low, high = _robust_limits(autocorr, exclude_centre=True)
            half_y, half_x = autocorr.shape[0] // 2, autocorr.shape[1] // 2
            extent = (-half_x - 0.5, autocorr.shape[1] - half_x - 0.5, autocorr.shape[0] - half_y - 0.5,
                      -half_y - 0.5)
            image = ax_acf.imshow(autocorr, cmap="coolwarm", vmin=low, vmax=high, extent=extent)
            fig.colorbar(image, ax=ax_acf, fraction=0.046)
            ax_acf.set_title(f"{key}: mean autocorrelation", fontsize=9)
            ax_acf.set_xlabel("lag x (px)")
            ax_acf.set_ylabel("lag y (px)")

            radius = (np.arange(radial.size) + 0.5) / max(radial.size, 1)
            ax_radial.plot(radius, radial, color="tab:blue")
            ax_radial.set_title(f"{key}: radial profile", fontsize=9)
            ax_radial.set_xlabel("normalised frequency (Nyquist = 1)")
            ax_radial.set_ylabel("energy")
            ax_radial.grid(alpha=0.3)

            angle = (np.arange(angular.size) + 0.5) * angular_range_deg / max(angular.size, 1)
            ax_angular.plot(angle, angular, color="tab:green")
            ax_angular.set_title(f"{key}: angular profile", fontsize=9)
            ax_angular.set_xlabel("angle (degrees)")
            ax_angular.set_ylabel("energy")
            ax_angular.grid(alpha=0.3)
    return path
