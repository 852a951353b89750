"""Robust image decoding for third-party datasets.

Real forensic datasets mix JPEG thumbnails, PNGs, palette and RGBA images,
16-bit scans, CMYK JPEGs and EXIF-rotated photos. :func:`load_rgb` turns any of
them into an 8-bit RGB ``PIL.Image`` or raises :class:`UnreadableImage` naming
the file and the reason, so callers can skip and count it instead of crashing.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class UnreadableImage(Exception):
    """A file that cannot be decoded into an RGB image; ``reason`` is a short tag for reports."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit modes (and "I" decoded from a PNG, which can only be 16-bit) span 0..65535, so a dark
        # 16-bit scan stays dark; other 32-bit "I" images carry no declared range: values above 255
        # are taken as 16-bit, the rest as 8-bit.
        top = 65535.0 if img.mode in SIXTEEN_BIT_MODES or img.format == "PNG" or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo + 1e-12) * 255.0
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class DecodedImage:
    """A fully decoded image and what the file said about itself.

    ``image`` is 8-bit RGB with EXIF orientation applied; ``format`` is PIL's
    format read from the content ("JPEG", "PNG", ...), not from the extension;
    ``mode`` is the stored mode ("CMYK", "I;16", "P", ...); ``quantization``
    holds the JPEG quantisation tables (natural order) and is None otherwise; ``header`` what the header says
    besides (:func:`header_facts`: EXIF, its Software tag, JPEG chroma subsampling and sample precision).
    """

    image: Image.Image
    format: str | None
    mode: str
    quantization: dict[int, list[int]] | None = None
    header: dict = field(default_factory=dict)


#: PIL's ``JpegImagePlugin.get_sampling`` codes, as the chroma subsampling is written
JPEG_SAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
#: the EXIF Software tag (TIFF/EXIF tag 305, 0x0131)
EXIF_SOFTWARE = 0x0131


def header_facts(img: Image.Image) -> dict:
    """What an open image's header says, no pixel read: ``exif`` (1 when the file carries EXIF data, else 0),
    ``software`` (the EXIF Software tag, stripped, at most 64 characters; None without one), ``subsampling``
    (JPEG chroma subsampling, ``4:4:4`` / ``4:2:2`` / ``4:2:0``, ``other`` for other or one-channel layouts;
    None when not JPEG) and ``bits`` (the JPEG sample precision; None when not JPEG)."""
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - a malformed EXIF block is read as none, not as an unreadable image
        exif = {}
    software = exif.get(EXIF_SOFTWARE) if exif else None
    if isinstance(software, bytes):
        software = software.decode("latin-1", "replace")
    if software is not None:
        software = str(software).strip("\x00 ").strip()[:64] or None
    facts = {"exif": int(bool(exif) or bool(img.info.get("exif"))), "software": software,
             "subsampling": None, "bits": None}
    if img.format == "JPEG":
        from PIL import JpegImagePlugin

        facts["subsampling"] = JPEG_SAMPLING_NAMES.get(JpegImagePlugin.get_sampling(img), "other")
        facts["bits"] = getattr(img, "bits", None)
    return facts


def _check_pixel_limit(path: Path, img: Image.Image) -> None:
    """Refuse images above ``PIL.Image.MAX_IMAGE_PIXELS`` before decoding (thread-safe, unlike warning filters)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = img.size
    if limit is not None and width * height > limit:
        raise UnreadableImage(
            path,
            "decompression bomb",
            f"declares {width}x{height} = {width * height} pixels, above PIL.Image.MAX_IMAGE_PIXELS={limit}; "
            f"if the file is genuine, raise that limit before loading",
        )


def decode_image(path: str | Path, data: bytes | None = None) -> DecodedImage:
    """Decode ``path`` (or its already-read bytes ``data``) fully, once, into a :class:`DecodedImage`.

    Raises :class:`UnreadableImage` for empty, truncated, non-image and
    decompression-bomb files (PIL's ``MAX_IMAGE_PIXELS`` limit is kept).
    """
    path = Path(path)
    try:
        size = len(data) if data is not None else path.stat().st_size
        if size == 0:
            raise UnreadableImage(path, "empty file")
        source = io.BytesIO(data) if data is not None else path
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_pixel_limit(path, img)
                img.load()
                fmt, mode = img.format, img.mode
                tables = getattr(img, "quantization", None) if fmt == "JPEG" else None
                quantization = {int(k): list(v) for k, v in tables.items()} if tables else None
                header = header_facts(img)
                upright = ImageOps.exif_transpose(img)
                upright.format = fmt
                return DecodedImage(_to_rgb(upright), fmt, mode, quantization, header)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImage(path, "decompression bomb", str(err)) from None
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise UnreadableImage(path, "cannot read file", str(err)) from None
    except OSError as err:
        reason = "truncated" if "truncated" in str(err).lower() else "decode error"
        raise UnreadableImage(path, reason, str(err)) from None
    except (ValueError, SyntaxError, EOFError, IndexError, struct.error) as err:
        raise UnreadableImage(path, "decode error", f"{type(err).__name__}: {err}") from None


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an 8-bit RGB image, honouring EXIF orientation.

    Raises :class:`UnreadableImage` for empty, truncated, non-image and
    decompression-bomb files (PIL's ``MAX_IMAGE_PIXELS`` limit is kept).
    """
    return decode_image(path).image
