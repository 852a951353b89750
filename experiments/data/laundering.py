"""Laundering chains: what happens to an image between its generator and a detector in the wild.

An image found online has rarely kept its original file. It has been re-shared (shrunk and re-encoded by a
platform, often more than once), converted to WebP, screenshotted, cropped or turned grey. Each chain here is
one such history, with a severity axis of named levels (``ood=laundering``, ``conf/ood/laundering.yaml``), and
runs on the decoded file before the detector's own preprocessing (``ood.order: before_preprocessing``), as a
laundered file would reach it. A fixed laundering chain is part of the protocol of AI-GenBench (Pellegrini et
al., "AI-GenBench: A New Ongoing Benchmark for AI-Generated Image Detection", 2025); the re-share settings
follow the sizes and JPEG qualities that social platforms apply to uploads (long side 2048 / 1080 / 720 px,
quality about 85 / 75), and the WebP study follows the format's role as the web's re-encoding.

The chains, each a :class:`~experiments.data.perturbations.PerturbationKind` chosen by ``_target_``, and their
levels (the strings written in metric keys ``ood/<chain>/<level>/<metric>``):

=================== ================================================ =======================================
chain               one level                                        label (config strength)
=================== ================================================ =======================================
:class:`Reshare`    long side resized to L px (never up), JPEG q Q   ``l<L>_q<Q>`` (``[L, Q]``)
``passes: 2``       the same re-share applied twice                  ``l<L>_q<Q>``
:class:`WebP`       lossy WebP at quality Q                          ``q<Q>`` (``Q``)
:class:`Screenshot` resize by S, PNG round trip, centre crop keeping ``x<S>_a<A>`` (``[S, A / 100]``)
                    A % of the area (an even border removed)
:class:`Crop`       centre crop keeping A % of the area              ``a<A>`` (``A / 100``)
:class:`Greyscale`  BT.601 luma replicated to three channels         ``grey``
=================== ================================================ =======================================

Every chain also takes the level ``clean`` (the file as it is), the first point of each severity curve.
Levels are ordinal: the curves put them at their positions (``ordinal``), in the configured order (mildest
first). Chains that change the image size (``changes_size``) need the deployment order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from experiments.data.degradations import (
    PerturbationFn,
    centre_crop_area,
    check_images,
    check_quality,
    check_webp,
    decode_file,
    encode_jpeg,
    greyscale,
    png,
    rescale,
    resize_long_side,
    webp,
)
from experiments.data.perturbations import PerturbationKind, _check_number, _format_number

__all__ = ["CLEAN", "Crop", "Greyscale", "LaunderingChain", "Reshare", "Screenshot", "WebP", "reshare_file"]

#: the level of every chain that leaves the file as it is
CLEAN = "clean"


def _identity(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x


def _pair(what: str, form: str, strength: Any) -> tuple:
    if isinstance(strength, (str, bytes)) or not isinstance(strength, Sequence) or len(strength) != 2:
        raise ValueError(f"{what}: each level is a pair {form} or '{CLEAN}', got {strength!r}")
    for value in strength:
        _check_number(what, value)
    return tuple(strength)


def _fraction(what: str, value: Any) -> float:
    _check_number(what, value)
    if not 0 < value <= 1:
        raise ValueError(f"{what} must be in (0, 1], got {value}")
    return float(value)


def _percent(fraction: float) -> str:
    return _format_number(round(100 * fraction, 6))


class LaunderingChain(PerturbationKind):
    """A chain with named severity levels; ``clean`` is the identity level of every chain. A subclass checks a
    level (:meth:`check_level`), says how it runs (:meth:`level_step`) and how it is named (:meth:`level_label`)."""

    ordinal, axis = True, "severity level"

    def validate(self, strength: Any) -> Any:
        if strength == CLEAN:
            return CLEAN
        return self.check_level(strength)

    def step(self, strength: Any) -> PerturbationFn:
        return _identity if strength == CLEAN else self.level_step(strength)

    def label(self, strength: Any) -> str:
        return CLEAN if strength == CLEAN else self.level_label(strength)

    def axis_label(self, points: Sequence[Any]) -> str:
        return f"{self.axis} (mildest first)"

    def check_level(self, strength: Any) -> Any:
        raise NotImplementedError

    def level_step(self, strength: Any) -> PerturbationFn:
        raise NotImplementedError

    def level_label(self, strength: Any) -> str:
        raise NotImplementedError


def reshare_file(image: torch.Tensor, long_side: int, quality: int) -> bytes:
    """The file a platform serves for one upload ``(3, H, W)`` in [0, 1]: the long side resized to ``long_side``
    (never up, :func:`~experiments.data.degradations.resize_long_side`), then JPEG at ``quality`` (4:2:0)."""
    return encode_jpeg(resize_long_side(image.unsqueeze(0), int(long_side))[0], int(quality))


def reshare(x: torch.Tensor, long_side: int, quality: int, passes: int = 1) -> torch.Tensor:
    """``passes`` re-shares of every image of the batch (one at a time: sizes may differ after the resize)."""
    check_images(x, "reshare")
    out = []
    for image in x:
        for _ in range(passes):
            image = decode_file(reshare_file(image, long_side, quality))
        out.append(image)
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


class Reshare(LaunderingChain):
    """A social-media re-share: the long side resized to ``L`` px (bicubic, antialiased; never up, so an image
    already smaller keeps its size), then JPEG at quality ``Q``; level ``[L, Q]``, label ``l<L>_q<Q>``.
    ``passes: 2`` is the double re-share (the same chain applied twice, as a re-posted re-post)."""

    changes_size = True

    def __init__(self, strengths: Sequence[Any] = (), passes: int = 1) -> None:
        super().__init__(strengths)
        if int(passes) != passes or passes < 1:
            raise ValueError(f"Reshare: passes must be a positive int, got {passes!r}")
        self.passes = int(passes)

    def check_level(self, strength: Any) -> tuple[int, int]:
        long_side, quality = _pair("reshare", "[long_side, quality]", strength)
        if int(long_side) != long_side or long_side < 1:
            raise ValueError(f"reshare: long_side must be a positive int, got {long_side!r}")
        check_quality(quality)
        return int(long_side), int(quality)

    def level_step(self, strength: tuple[int, int]) -> PerturbationFn:
        long_side, quality = strength
        return lambda x, g: reshare(x, long_side, quality, self.passes)

    def level_label(self, strength: tuple[int, int]) -> str:
        return f"l{strength[0]}_q{strength[1]}"


class WebP(LaunderingChain):
    """Lossy WebP re-encoding at quality ``Q`` (Pillow's libwebp encoder); label ``q<Q>``. Raises a clear error
    when this Pillow has no WebP support."""

    def check_level(self, strength: Any) -> int:
        _check_number("webp", strength)
        check_quality(strength)
        check_webp()
        return int(strength)

    def level_step(self, strength: int) -> PerturbationFn:
        return lambda x, g: webp(x, strength)

    def level_label(self, strength: int) -> str:
        return f"q{strength}"


class Screenshot(LaunderingChain):
    """A screenshot: the image shown at scale ``S`` (bicubic, antialiased), saved as PNG, and cropped to the
    centred region keeping ``A`` of the area (an even border, ``(1 - sqrt(A)) / 2`` of each side, removed, as
    the window frame around a picture is); level ``[S, A]``, label ``x<S>_a<A %>``."""

    changes_size = True

    def check_level(self, strength: Any) -> tuple[float, float]:
        scale, area = _pair("screenshot", "[scale, area]", strength)
        return _fraction("screenshot: scale", scale), _fraction("screenshot: area", area)

    def level_step(self, strength: tuple[float, float]) -> PerturbationFn:
        scale, area = strength
        return lambda x, g: centre_crop_area(png(rescale(x, scale)), area)

    def level_label(self, strength: tuple[float, float]) -> str:
        return f"x{_format_number(strength[0])}_a{_percent(strength[1])}"


class Crop(LaunderingChain):
    """A centre crop keeping ``A`` in (0, 1] of the area (each side scaled by ``sqrt(A)``); label ``a<A %>``."""

    changes_size = True

    def check_level(self, strength: Any) -> float:
        return _fraction("crop: area", strength)

    def level_step(self, strength: float) -> PerturbationFn:
        return lambda x, g: centre_crop_area(x, strength)

    def level_label(self, strength: float) -> str:
        return f"a{_percent(strength)}"


class Greyscale(LaunderingChain):
    """Greyscale: ITU-R BT.601 luma replicated to the three channels; its one level is ``grey``."""

    def check_level(self, strength: Any) -> str:
        if strength != "grey":
            raise ValueError(f"greyscale: the levels are '{CLEAN}' and 'grey', got {strength!r}")
        return "grey"

    def level_step(self, strength: str) -> PerturbationFn:
        return lambda x, g: greyscale(x)

    def level_label(self, strength: str) -> str:
        return "grey"
