"""Pure tensor -> tensor feature extractors shared by every detector (batched, device-agnostic)."""

from features.bottleneck import GaussianBottleneck
from features.equalizer import ExtremeEqualizer
from features.fft_magnitude import FFTMagnitude
from features.local_fft import LocalPatchFFT
from features.npr import NPRResidual
from features.precision import as_unit_float, autocast_immune
from features.radial_angular import RadialAngularHistogram
from features.residual import LaplacianResidual
from features.spectrum import (
    autocorrelation,
    hermitian_full,
    log_magnitude_spectrum,
    power_and_autocorrelation,
    power_spectrum,
    rfft_log_magnitude,
    rfft_power,
    to_grayscale,
)
from features.wavelet import HaarDWT

__all__ = [
    "ExtremeEqualizer",
    "FFTMagnitude",
    "GaussianBottleneck",
    "HaarDWT",
    "LaplacianResidual",
    "LocalPatchFFT",
    "NPRResidual",
    "RadialAngularHistogram",
    "as_unit_float",
    "autocast_immune",
    "autocorrelation",
    "hermitian_full",
    "log_magnitude_spectrum",
    "power_and_autocorrelation",
    "power_spectrum",
    "rfft_log_magnitude",
    "rfft_power",
    "to_grayscale",
]
