"""Features compute in full precision, whatever autocast the caller runs under.

Mixed precision (``16-mixed``, ``bf16-mixed``) is for the backbones. The spectral
features are not safe in it: a 224 x 224 log-magnitude map sums to about 2e5,
past float16's largest value (65,504), and bfloat16's 8-bit mantissa moves the
standardised maps by whole standard deviations. Every feature's tensor entry point
is therefore wrapped in :func:`autocast_immune`: autocast is switched off on the
input's device, the input is taken to float32 (float64 stays float64), and the
output is float32. The backbone after the feature runs under autocast again.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

Method = TypeVar("Method", bound=Callable[..., object])


def feature_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a feature computes and returns for input ``x``: float64 for float64, float32 for anything else
    (uint8 pixels, float16 / bfloat16 activations, float32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def as_feature_float(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :func:`feature_dtype` (a plain cast: uint8 values are not rescaled)."""
    dtype = feature_dtype(x)
    return x if x.dtype == dtype else x.to(dtype)


def autocast_immune(method: Method) -> Method:
    """Decorate a feature method ``(self, x, ...)``: it runs with autocast off on ``x``'s device, on ``x`` in
    :func:`feature_dtype`."""

    @functools.wraps(method)
    def wrapper(self, x: torch.Tensor, *args, **kwargs):
        if not torch.is_autocast_enabled(x.device.type):  # nothing to switch off (and no autocast region in an
            return method(self, as_feature_float(x), *args, **kwargs)  # exported graph: torch.export.load refuses it)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return method(self, as_feature_float(x), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def as_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``0..255`` -> float32 in ``[0, 1]``; floating images pass unchanged.

    Computed as ``x * (1 / 255)``, bit for bit torchvision's ``to_dtype(..., scale=True)``.

    Batches travel as uint8 (a quarter of the bytes of float32) until they reach the model's device; this is
    where they become the ``[0, 1]`` floats that detectors take.
    """
    if images.is_floating_point():
        return images
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (0..255) or float in [0, 1], got dtype {images.dtype}")
    return images.to(torch.float32).mul_(1.0 / 255.0)
