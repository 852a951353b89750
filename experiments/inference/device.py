"""Where a trained detector runs: the one device resolver of ``evaluate``, ``ood_stress`` and ``detect``."""

from __future__ import annotations

import torch

from experiments.errors import UserError


class DeviceUnavailable(RuntimeError, UserError):
    """A CUDA device was asked for on a machine without CUDA."""


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when CUDA is available, else ``"cpu"``; any other name is kept, and a CUDA name
    without CUDA raises :class:`DeviceUnavailable`."""
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {device} was asked for but CUDA is not available; use cpu or auto")
    return device
