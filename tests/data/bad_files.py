"""Write every kind of awkward image file a real dataset contains into a folder, for tests.

Three families:

* ``UNREADABLE``: files :func:`experiments.data.images.load_rgb` must refuse, with the
  ``UnreadableImage.reason`` each one must give.
* ``DECODABLE``: unusual but valid images (CMYK JPEG, 16-bit PNGs, palette, RGBA,
  grayscale, EXIF-rotated) that must decode into correct RGB.
* ``"too_small"``: a valid image smaller than the crop.

:func:`write_bad_files` writes all of them and returns ``{kind: path}``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

#: kind -> the ``UnreadableImage.reason`` that ``load_rgb`` gives for it.
UNREADABLE: dict[str, str] = {
    "truncated_jpeg": "truncated",
    "truncated_png": "truncated",
    "zero_bytes": "empty file",
    "not_an_image": "not an image",
    "decompression_bomb": "decompression bomb",
}
#: valid images in uncommon encodings, all at least ``size`` pixels on their short side.
DECODABLE: tuple[str, ...] = (
    "cmyk_jpeg",
    "png16_gray",
    "png16_rgb",
    "palette",
    "palette_transparent",
    "rgba",
    "grayscale",
    "exif_rotated",
)
TOO_SMALL = "too_small"

#: colours of the two halves of the decodable test pattern (left, right).
LEFT_RGB, RIGHT_RGB = (200, 30, 30), (30, 30, 200)
#: EXIF orientation tag and the value meaning "rotate 90 degrees clockwise to display".
EXIF_ORIENTATION, ROTATE_90_CW = 0x0112, 6


def two_halves(width: int, height: int) -> np.ndarray:
    """``(height, width, 3)`` uint8: left half ``LEFT_RGB``, right half ``RIGHT_RGB``."""
    img = np.empty((height, width, 3), np.uint8)
    img[:, : width // 2] = LEFT_RGB
    img[:, width // 2:] = RIGHT_RGB
    return img


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A minimal PNG: ``raw`` is the filtered scanlines (each row prefixed with filter byte 0)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png16_rgb_bytes(values: np.ndarray) -> bytes:
    """A 48-bit RGB PNG from a ``(H, W, 3)`` uint16 array."""
    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    return png_bytes(width, height, 16, 2, rows)


def noisy_rgb(size: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def write_unreadable(folder: Path, size: int = 48) -> dict[str, Path]:
    """Truncated JPEG and PNG, a zero-byte file, text named ``.jpg`` and a PNG header declaring 100000x100000."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {kind: folder / f"{kind}.{'png' if 'png' in kind or 'bomb' in kind else 'jpg'}" for kind in UNREADABLE}
    for kind, fmt in (("truncated_jpeg", "JPEG"), ("truncated_png", "PNG")):
        whole = folder / f"whole.{fmt.lower()}"
        Image.fromarray(noisy_rgb(size)).save(whole, format=fmt)
        data = whole.read_bytes()
        whole.unlink()
        out[kind].write_bytes(data[: int(len(data) * 0.6)])
    out["zero_bytes"].write_bytes(b"")
    out["not_an_image"].write_text("this is a text file with an image extension\n")
    out["decompression_bomb"].write_bytes(png_bytes(100_000, 100_000, 8, 0, b"\x00" * 100))
    return out


def write_decodable(folder: Path, size: int = 48) -> dict[str, Path]:
    """Valid images in unusual modes; each is at least ``size`` px on the short side once upright."""
    folder.mkdir(parents=True, exist_ok=True)
    wide = two_halves(size * 3 // 2, size)
    out = {}
    out["cmyk_jpeg"] = folder / "cmyk_jpeg.jpg"
    Image.fromarray(wide).convert("CMYK").save(out["cmyk_jpeg"], quality=95)
    ramp = np.linspace(0, 65535, size * size).round().astype(np.uint16).reshape(size, size)
    ramp[0, :4] = (0, 25700, 32768, 65535)
    out["png16_gray"] = folder / "png16_gray.png"
    Image.fromarray(ramp).save(out["png16_gray"])
    out["png16_rgb"] = folder / "png16_rgb.png"
    out["png16_rgb"].write_bytes(png16_rgb_bytes(wide.astype(np.uint16) * 257))
    palette = Image.fromarray(wide).quantize(colors=4)
    out["palette"] = folder / "palette.png"
    palette.save(out["palette"])
    out["palette_transparent"] = folder / "palette_transparent.png"
    index_of_left = palette.getpixel((0, 0))
    palette.save(out["palette_transparent"], transparency=index_of_left)
    rgba = np.dstack([wide, np.full(wide.shape[:2], 255, np.uint8)])
    rgba[:, : wide.shape[1] // 2, 3] = 0  # left half fully transparent -> white
    out["rgba"] = folder / "rgba.png"
    Image.fromarray(rgba).save(out["rgba"])
    out["grayscale"] = folder / "grayscale.png"
    Image.fromarray(np.full((size, size), 100, np.uint8)).save(out["grayscale"])
    out["exif_rotated"] = folder / "exif_rotated.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    Image.fromarray(wide).save(out["exif_rotated"], quality=95, exif=exif)
    return out


def write_too_small(folder: Path, size: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "too_small.png"
    Image.fromarray(noisy_rgb(size)).save(path)
    return path


def write_bad_files(folder: str | Path, size: int = 48, small: int = 8) -> dict[str, Path]:
    """Write every kind into ``folder``: ``UNREADABLE`` kinds, ``DECODABLE`` kinds (>= ``size`` px) and
    ``"too_small"`` (``small`` px). Returns ``{kind: path}``."""
    folder = Path(folder)
    out = write_unreadable(folder, size)
    out.update(write_decodable(folder, size))
    out[TOO_SMALL] = write_too_small(folder, small)
    return out
