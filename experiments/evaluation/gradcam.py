"""Grad-CAM maps of a detector's single logit, one map per stream.

Grad-CAM (Selvaraju et al., 2017, "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization") weights the activations of a
convolutional layer by the spatially pooled gradients of the class score. The
maps come from the maintained ``pytorch_grad_cam`` package; this module only
adapts the suite's detectors to it:

* a detector returns one logit per image, shape ``(B,)``: it is wrapped to
  ``(B, 1)`` and the target is ``BinaryClassifierOutputTarget`` (the logit for
  "synthetic", its negative for "real");
* ``detector.cam_layers()`` names the layer of each stream (``spatial`` and
  ``frequency`` for SPECTRAFORGE, ``localfft`` for the Synapse-7 ResNet, ``npr`` for NPR), and one
  Grad-CAM is run per stream so the streams can be compared side by side, as in
  SPECTRAFORGE's dual-stream Grad-CAM figure.

The frequency stream sees the centred FFT magnitude, which has the image's size,
so its map is indexed by frequency (centre = DC), not by image position.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


class LogitColumn(nn.Module):
    """``(B,)`` logits -> ``(B, 1)``, the classifier-output shape ``pytorch_grad_cam`` expects."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector(x).reshape(x.shape[0], -1)


def stream_cams(
    detector: nn.Module,
    images: torch.Tensor,
    target_classes: Sequence[int] | None = None,
    layers: dict[str, nn.Module] | None = None,
) -> dict[str, np.ndarray]:
    """Grad-CAM of each stream for ``images`` ``(N, 3, H, W)`` in [0, 1].

    Args:
        detector: a :class:`detectors.base.Detector` (``forward(x) -> (B,)`` logits, ``cam_layers()``).
        images: the batch to explain.
        target_classes: per image, 1 to explain the "synthetic" evidence, 0 for the "real" evidence
            (default: 1 for every image).
        layers: ``{stream name: layer}``; default ``detector.cam_layers()``.

    Returns:
        ``{stream name: (N, H, W) float32 array in [0, 1]}`` (each map min-max scaled, as the package does).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    layers = dict(layers if layers is not None else detector.cam_layers())
    if not layers:
        raise ValueError(f"{type(detector).__name__}.cam_layers() names no layer")
    n = images.shape[0]
    classes = [1] * n if target_classes is None else [int(c) for c in target_classes]
    if len(classes) != n:
        raise ValueError(f"target_classes has {len(classes)} entries for {n} images")
    device = next(detector.parameters()).device
    wrapped = LogitColumn(detector)
    was_training = detector.training
    params = list(detector.parameters())
    needed = [p.requires_grad for p in params]
    out: dict[str, np.ndarray] = {}
    try:
        for p in params:  # no weight gradients: only d logit / d activation is needed
            p.requires_grad_(False)
        for name, layer in layers.items():
            handle = layer.register_forward_hook(_gradient_starts_here)
            try:
                with GradCAM(model=wrapped, target_layers=[layer]) as cam:
                    maps = cam(input_tensor=images.detach().to(device).float(),
                               targets=[BinaryClassifierOutputTarget(c) for c in classes])
            finally:
                handle.remove()
            out[name] = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float32)), 0.0, 1.0)
    finally:
        for p, flag in zip(params, needed):
            p.requires_grad_(flag)
        detector.train(was_training)
    return out


def _gradient_starts_here(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the layer's output becomes a leaf that requires grad, so the backward pass runs from the
    logit to this layer only (not through the layers before it, nor into any weight)."""
    return output.detach().requires_grad_(True)
