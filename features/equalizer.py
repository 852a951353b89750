"""Extreme Equalizer: removes dataset leakage before training.

SPECTRAFORGE ("Domain-Equalized Frequency-Spatial Fusion for Synthetic
Dermatology Detection"): real and synthetic images of a data set often differ
in incidental ways (real photos stored as JPEG, generated ones as PNG; different
sizes, resamplers or colour statistics), and detectors learn those instead of
generator traces. The Extreme Equalizer puts every image, real or fake, through
the same resize, colour and JPEG re-encoding, so these shortcuts carry no label
information.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageOps

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
COLOR_MODES: tuple[str, ...] = ("grey", "hist")
#: Chroma subsampling used for every re-encoding (2 = 4:2:0, the common camera/web setting).
JPEG_SUBSAMPLING: int = 2


class ExtremeEqualizer:
    """PIL image in, PIL RGB image out: one resize, one colour treatment, one JPEG quality for all.

    Steps, in this order, each skipped when its setting is ``None``:

    1. ``size``: resize the short side to ``size`` with ``interpolation``
       (``"bicubic" | "bilinear" | "area" | "lanczos" | "nearest"``; ``"area"``
       is PIL's box filter), then centre-crop to ``size x size``.
    2. ``color``: ``"grey"`` converts to ITU-R 601 luminance and back to three
       equal channels; ``"hist"`` equalises the histogram of each channel.
    3. ``jpeg_quality``: encode to JPEG at this quality (4:2:0 chroma
       subsampling) in memory and decode again. It comes last, so every output
       has the same compression history.

    Deterministic: the same input and settings give the same pixels. Use it in
    a torchvision ``Compose`` before ``ToTensor``, identically for real and fake.

    Caveat: re-encoding alone does not erase an earlier JPEG history when the
    8x8 block grid survives. An image saved at quality 75 and re-encoded at 90
    keeps its quality-75 blocking, so a blockiness probe still tells it from a
    PNG-born image; re-encoding at the same quality, or a resize that changes
    the size (which moves the grid) before re-encoding, removes that cue.
    """

    def __init__(
        self,
        size: int | None = None,
        interpolation: str = "bicubic",
        jpeg_quality: int | None = None,
        color: str | None = None,
    ) -> None:
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"ExtremeEqualizer: size must be a positive int or None, got {size!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"ExtremeEqualizer: interpolation={interpolation!r} is not supported; "
                f"choose one of {sorted(INTERPOLATIONS)}"
            )
        if jpeg_quality is not None and (not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100):
            raise ValueError(f"ExtremeEqualizer: jpeg_quality must be an int in [1, 100] or None, got {jpeg_quality!r}")
        if color is not None and color not in COLOR_MODES:
            raise ValueError(f"ExtremeEqualizer: color={color!r} is not supported; choose None or one of {COLOR_MODES}")
        self.size = size
        self.interpolation = interpolation
        self.jpeg_quality = jpeg_quality
        self.color = color

    @property
    def out_chans(self) -> int:
        """Channels of the output image: always 3 (RGB)."""
        return 3

    def __call__(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"ExtremeEqualizer expects a PIL image, got {type(image).__name__}; "
                f"place it before ToTensor in the transform pipeline"
            )
        image = image.convert("RGB")
        if self.size is not None:
            image = self._resize_and_crop(image)
        if self.color == "grey":
            image = image.convert("L").convert("RGB")
        elif self.color == "hist":
            image = ImageOps.equalize(image)
        if self.jpeg_quality is not None:
            image = self._reencode(image)
        return image

    def _resize_and_crop(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        scale = self.size / min(width, height)
        new_w = max(self.size, round(width * scale))
        new_h = max(self.size, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample=INTERPOLATIONS[self.interpolation])
        left = (new_w - self.size) // 2
        top = (new_h - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def _reencode(self, image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.jpeg_quality, subsampling=JPEG_SUBSAMPLING)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")

    def as_dict(self) -> dict[str, Any]:
        """Settings as a flat dict, e.g. for ``mlflow.log_params``."""
        return {
            "size": self.size,
            "interpolation": self.interpolation,
            "jpeg_quality": self.jpeg_quality,
            "color": self.color,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.as_dict().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtremeEqualizer) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().items()))
