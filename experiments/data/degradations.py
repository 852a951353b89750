"""Pixel degradations of decoded images, float ``(B, 3, H, W)`` in [0, 1]: the steps of the OOD stress grid
(:mod:`experiments.data.perturbations`) and of the CNNDetection augmentation.

- additive Gaussian noise: the noise injection of SPECTRAFORGE's OOD stress test ("Domain-Equalized
  Frequency-Spatial Fusion for Synthetic Dermatology Detection");
- JPEG re-compression and Gaussian blur: the post-processing robustness study of CNNDetection (Wang et al.
  2020, "CNN-generated images are surprisingly easy to spot... for now", Fig. 5);
- down-scaling and up-scaling back, which wipes out the high-frequency up-sampling traces that spectral
  detectors rely on.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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
