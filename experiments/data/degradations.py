"""Pixel degradations of decoded images, float ``(B, 3, H, W)`` in [0, 1]: the steps of the OOD stress grid
(:mod:`experiments.data.perturbations`) and of the CNNDetection augmentation.

- additive Gaussian noise: the noise injection of SPECTRAFORGE's OOD stress test ("Domain-Equalized
  Frequency-Spatial Fusion for Synthetic Dermatology Detection");
- JPEG re-compression and Gaussian blur: the post-processing robustness study of CNNDetection (Wang et al.
  2020, "CNN-generated images are surprisingly easy to spot... for now", Fig. 5);
- down-scaling and up-scaling back, which wipes out the high-frequency up-sampling traces that spectral
  detectors rely on;
- the steps of the laundering chains (:mod:`experiments.data.laundering`): resizing the long side (never up),
  rescaling, centre crops, greyscale, and WebP and PNG round trips through Pillow's encoders. These change the
  image size; they run on decoded files before a detector's preprocessing.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, features

from features.bottleneck import GaussianBottleneck
from features.equalizer import JPEG_SUBSAMPLING

#: ``fn(x, generator) -> x``: a perturbation step; ``generator`` is ignored by deterministic steps.
PerturbationFn = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


# -- single perturbations ---------------------------------------------------------------------------
def check_images(x: torch.Tensor, what: str) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{what} expects a float (B, C, H, W) batch in [0, 1], got {x.dtype} {tuple(x.shape)}")


def gaussian_noise(x: torch.Tensor, sigma255: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add ``N(0, (sigma255 / 255)^2)`` noise to every pixel and clamp to [0, 1].

    The kind of OOD stress test SPECTRAFORGE reports (noise injection; the
    levels are the suite's, SPECTRAFORGE states none). ``sigma255`` is on the 8-bit scale
    (``sigma255=5`` means 5 grey levels). The noise is drawn in float32 on the
    generator's device (CPU when ``generator`` is None, from the global RNG) and
    then moved to ``x``'s device and dtype. Clamping to [0, 1] makes the
    effective noise std slightly lower than ``sigma255 / 255`` for pixels near
    0 or 1 (half-normal folding); on mid-grey it is exact to within sampling
    error. ``sigma255=0`` returns ``x`` unchanged.
    """
    check_images(x, "gaussian_noise")
    if sigma255 < 0:
        raise ValueError(f"gaussian_noise: sigma255 must be >= 0, got {sigma255}")
    if sigma255 == 0:
        return x
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return (x + noise.to(device=x.device, dtype=x.dtype) * (sigma255 / 255.0)).clamp_(0.0, 1.0)


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def encode_jpeg(image: torch.Tensor, quality: int) -> bytes:
    """One ``(3, H, W)`` float image in [0, 1] -> JPEG bytes (PIL/libjpeg, 4:2:0 chroma subsampling).

    The image is first rounded to 8 bits. Uses the same encoder settings as
    ``features.equalizer.ExtremeEqualizer`` so the suite has one JPEG path.
    """
    check_quality(quality)
    buffer = io.BytesIO()
    pil = Image.fromarray(to_uint8_hwc(image))
    pil.save(buffer, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING)
    return buffer.getvalue()


def jpeg_roundtrip_pil(image: Image.Image, quality: int) -> Image.Image:
    """PIL image -> JPEG at ``quality`` in memory -> decoded PIL RGB image."""
    check_quality(quality)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def check_quality(quality: int) -> None:
    if int(quality) != quality or not 1 <= quality <= 100:
        raise ValueError(f"jpeg quality must be an int in [1, 100], got {quality!r}")


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode every image of the batch as JPEG at ``quality`` and decode it again.

    A real libjpeg round trip (see :func:`encode_jpeg`), so 8x8 block artefacts
    and chroma subsampling are those of real files; ``quality=100`` still
    re-encodes (4:2:0 subsampling and rounding make it slightly lossy). The
    output lies on the 8-bit grid, on ``x``'s device and dtype.
    """
    check_images(x, "jpeg")
    check_quality(quality)
    if x.shape[1] != 3:
        raise ValueError(f"jpeg expects RGB images (B, 3, H, W), got {tuple(x.shape)}")
    decoded = []
    for image in x:
        with Image.open(io.BytesIO(encode_jpeg(image, quality))) as img:
            decoded.append(torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()))
    out = torch.stack(decoded).permute(0, 3, 1, 2).float().div_(255.0)
    return out.to(device=x.device, dtype=x.dtype)


def decode_file(data: bytes) -> torch.Tensor:
    """Encoded image bytes (any format Pillow reads) -> ``(3, H, W)`` float RGB in [0, 1]."""
    with Image.open(io.BytesIO(data)) as img:
        pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float().div_(255.0)


def check_webp() -> None:
    """Raise a clear error when this Pillow build has no WebP encoder (``PIL.features.check('webp')``)."""
    if not features.check("webp"):
        raise RuntimeError("this Pillow build has no WebP support (PIL.features.check('webp') is False); install a "
                           "Pillow wheel built with libwebp (the PyPI wheels are), or drop the webp chain from ood")


def encode_webp(image: torch.Tensor, quality: int) -> bytes:
    """One ``(3, H, W)`` float image in [0, 1] -> lossy WebP bytes at ``quality`` (Pillow/libwebp)."""
    check_quality(quality)
    check_webp()
    buffer = io.BytesIO()
    Image.fromarray(to_uint8_hwc(image)).save(buffer, format="WEBP", quality=int(quality))
    return buffer.getvalue()


def encode_png(image: torch.Tensor) -> bytes:
    """One ``(3, H, W)`` float image in [0, 1] -> PNG bytes (lossless once rounded to 8 bits)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8_hwc(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def _per_image(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` on each ``(3, H, W)`` image of the batch, stacked back on ``x``'s device and dtype."""
    return torch.stack([fn(image) for image in x]).to(device=x.device, dtype=x.dtype)


def webp(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode every image as lossy WebP at ``quality`` and decode it again (see :func:`encode_webp`)."""
    check_images(x, "webp")
    check_quality(quality)
    return _per_image(x, lambda image: decode_file(encode_webp(image, quality)))


def png(x: torch.Tensor) -> torch.Tensor:
    """A PNG round trip: the image rounded to the 8-bit grid (PNG is lossless), as a screenshot saves it."""
    check_images(x, "png")
    return _per_image(x, lambda image: decode_file(encode_png(image)))


def resize_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic, antialiased resize to ``(height, width)``, clamped to [0, 1]; the same size returns ``x``."""
    if (height, width) == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False,
                         antialias=True).clamp_(0.0, 1.0)


def resize_long_side(x: torch.Tensor, long_side: int) -> torch.Tensor:
    """Resize so the long side is ``long_side`` px, keeping the aspect ratio, as a platform shrinks an upload;
    never up: an image whose long side is already at most ``long_side`` is returned unchanged."""
    check_images(x, "resize_long_side")
    if int(long_side) != long_side or long_side < 1:
        raise ValueError(f"resize_long_side: long_side must be a positive int, got {long_side!r}")
    height, width = x.shape[-2:]
    if max(height, width) <= long_side:
        return x
    scale = long_side / max(height, width)
    return resize_to(x, max(1, round(height * scale)), max(1, round(width * scale)))


def rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Resize both sides by ``factor`` in (0, 1] (bicubic, antialiased), keeping the smaller size."""
    check_images(x, "rescale")
    if not 0 < factor <= 1:
        raise ValueError(f"rescale: factor must be in (0, 1], got {factor}")
    height, width = x.shape[-2:]
    return resize_to(x, max(1, round(height * factor)), max(1, round(width * factor)))


def centre_crop_area(x: torch.Tensor, area: float) -> torch.Tensor:
    """The centred crop keeping ``area`` in (0, 1] of the pixels: each side scaled by ``sqrt(area)`` (so the
    aspect ratio stays), i.e. an even border of ``(1 - sqrt(area)) / 2`` of each side removed all round."""
    check_images(x, "centre_crop_area")
    if not 0 < area <= 1:
        raise ValueError(f"centre_crop_area: area must be in (0, 1], got {area}")
    height, width = x.shape[-2:]
    side = float(area) ** 0.5
    h, w = max(1, round(height * side)), max(1, round(width * side))
    top, left = (height - h) // 2, (width - w) // 2
    return x[..., top:top + h, left:left + w]


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma (``0.299 R + 0.587 G + 0.114 B``, Pillow's ``convert("L")``) in all three channels."""
    check_images(x, "greyscale")
    if x.shape[1] != 3:
        raise ValueError(f"greyscale expects RGB images (B, 3, H, W), got {tuple(x.shape)}")
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True).clamp_(0.0, 1.0).expand_as(x).contiguous()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels; ``sigma=0`` returns ``x`` unchanged.

    Uses ``features.bottleneck.GaussianBottleneck`` (separable kernel of
    ``2 * ceil(3 sigma) + 1`` taps, reflect padding), the suite's one blur.
    """
    check_images(x, "gaussian_blur")
    if sigma < 0:
        raise ValueError(f"gaussian_blur: sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x
    return GaussianBottleneck(sigma=float(sigma), in_chans=x.shape[1]).to(x.device)(x)


def downscale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize by ``scale`` (bilinear, antialiased) and back up to the input size (bilinear).

    Frequencies above ``scale`` times the Nyquist frequency are removed, which
    erases high-frequency generator traces while keeping the image size the
    detector expects. ``scale=1.0`` returns ``x`` unchanged; ``scale`` must lie
    in (0, 1].
    """
    check_images(x, "downscale")
    if not 0 < scale <= 1:
        raise ValueError(f"downscale: scale must be in (0, 1], got {scale}")
    if scale == 1:
        return x
    height, width = x.shape[-2:]
    small_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = F.interpolate(x, size=small_size, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def compose(*steps: PerturbationFn) -> PerturbationFn:
    """Chain perturbation steps ``fn(x, generator)`` left to right (e.g. JPEG 50, then blur sigma 2).

    All steps share the one generator, in order, so the result is deterministic.
    """

    def composed(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for step in steps:
            x = step(x, generator)
        return x

    return composed
