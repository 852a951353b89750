"""JPEG decoding on the model's device, batched (``data.decode=device``).

Decoding JPEGs in loader workers runs at about 1,500 images/s per CPU core, far below what a GPU trains at.
With ``data.decode=device`` the workers only read the files' bytes; the batch of bytes stays in host memory
(nvJPEG reads it from there) and :func:`decode_on_device` decodes it in one
``torchvision.io.decode_jpeg(list, device=...)`` call, then resizes and crops on the device, one call per
group of equally sized images.

What the GPU decoder cannot reproduce exactly stays on the CPU path, in the workers: files that are not
JPEG, CMYK or other unusual JPEG modes, and JPEGs with an EXIF rotation. Runs with an equalizer or a
training augmentation (PIL transforms) do not use this path at all. The device path resizes with
torch's antialiased bicubic filter instead of PIL's, so pixels can differ by a few grey levels when
``data.resize_size`` is set; with ``resize_size=null`` (crop only) the two paths agree up to the JPEG
decoders' rounding.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from experiments.data.dataset import ImageDataset, collate_skipping
from experiments.data.layouts import Sample
from experiments.data.transforms import Preprocess

#: EXIF tag of the orientation; 1 = upright.
EXIF_ORIENTATION = 0x0112
#: JPEG modes nvJPEG decodes to the same RGB as the CPU path.
DEVICE_JPEG_MODES = ("RGB", "L")


class EncodedJpegs:
    """JPEG files' bytes waiting for :func:`decode_on_device`, and the crop they get.

    Deliberately not a tensor or a dataclass: Lightning's batch transfer leaves it on the host, where the
    decoder reads its input.
    """

    __slots__ = ("data", "crop_size", "resize_size", "random_crop")

    def __init__(self, data: list[bytes], preprocess: Preprocess) -> None:
        self.data = data
        self.crop_size = preprocess.crop_size
        self.resize_size = preprocess.resize_size
        self.random_crop = preprocess.random_crop

    def __len__(self) -> int:
        return len(self.data)


def device_decodable(path: str | Path) -> bytes | None:
    """The bytes of ``path`` when it is a JPEG that decodes on the device like on the CPU, else None.

    Only the header is parsed (PIL opens lazily), so this costs a file read, not a decode.
    """
    try:
        data = Path(path).read_bytes()
        if not data.startswith(b"\xff\xd8\xff"):
            return None
        with Image.open(Path(path)) as img:
            if img.format != "JPEG" or img.mode not in DEVICE_JPEG_MODES:
                return None
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None  # the CPU path reports why the file cannot be read
    return data


class EncodedImageDataset(ImageDataset):
    """:class:`ImageDataset` whose JPEG files travel as bytes (``{"encoded": bytes, ...}``); every other file is
    decoded and preprocessed on the CPU as before."""

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess, generator_names: Sequence[str]) -> None:
        if preprocess.equalizer is not None or preprocess.augment is not None:
            raise ValueError("data.decode=device cannot apply an equalizer or an augmentation; use data.decode=cpu")
        super().__init__(samples, preprocess, generator_names)

    def __getitem__(self, index: int) -> dict | None:
        data = device_decodable(self.samples[index].path)
        if data is None:
            return super().__getitem__(index)
        return {"encoded": data, "label": self.label_values[index], "generator": self.generator_ids[index],
                "index": torch.tensor(index)}


def collate_encoded(items: list[dict | None], preprocess: Preprocess) -> dict:
    """:func:`collate_skipping` for :class:`EncodedImageDataset` items: the CPU-decoded images first, then the
    encoded ones, whose labels follow in the same order and whose bytes ride along as :class:`EncodedJpegs`."""
    decoded = [it for it in items if it is not None and "encoded" not in it]
    encoded = [it for it in items if it is not None and "encoded" in it]
    skipped = len(items) - len(decoded) - len(encoded)
    if not encoded:
        return collate_skipping(items)
    batch = default_collate([{k: v for k, v in it.items() if k != "encoded"} for it in encoded])
    images = torch.empty(0, 3, preprocess.crop_size, preprocess.crop_size, dtype=torch.uint8)
    if decoded:
        first = default_collate(decoded)
        images = first.pop("image")
        batch = {k: torch.cat([first[k], batch[k]]) for k in batch}
    batch.update(image=images, skipped=torch.tensor(skipped),
                 encoded=EncodedJpegs([it["encoded"] for it in encoded], preprocess))
    return batch


def _resize_and_crop(images: torch.Tensor, crop: EncodedJpegs) -> torch.Tensor | None:
    """``(n, 3, h, w)`` uint8 of one size -> ``(n, 3, crop, crop)`` uint8, as :class:`Preprocess` does; None
    when the images are smaller than the crop."""
    if crop.resize_size is not None and min(images.shape[-2:]) != crop.resize_size:
        resized = TF.resize(images.float(), crop.resize_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        images = resized.round_().clamp_(0, 255).to(torch.uint8)
    h, w = images.shape[-2:]
    c = crop.crop_size
    if min(h, w) < c:
        return None
    if not crop.random_crop:
        top, left = (h - c) // 2, (w - c) // 2
        return images[..., top : top + c, left : left + c]
    tops = torch.randint(0, h - c + 1, (len(images),)).tolist()
    lefts = torch.randint(0, w - c + 1, (len(images),)).tolist()
    return torch.stack([img[:, t : t + c, l : l + c] for img, t, l in zip(images, tops, lefts)])


def _decode_all(data: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Decode every JPEG in one batched call; if the batch fails, one by one, with None for the bad files."""
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's notice that TorchCodec supersedes it
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def decode_on_device(batch: dict, device: torch.device | str) -> dict:
    """Decode a batch's :class:`EncodedJpegs` on ``device`` and append the crops to ``batch["image"]``.

    Files that fail to decode, or are smaller than the crop, are dropped with their labels and counted in
    ``batch["skipped"]``, as the CPU path counts them. A batch without encoded files passes unchanged.
    """
    encoded: EncodedJpegs | None = batch.get("encoded")
    if encoded is None:
        return batch
    device = torch.device(device)
    crops: list[torch.Tensor | None] = [None] * len(encoded)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    decoded = _decode_all(encoded.data, device)
    for i, image in enumerate(decoded):
        if image is not None:
            by_size[tuple(image.shape[-2:])].append(i)
    for members in by_size.values():
        group = _resize_and_crop(torch.stack([decoded[i] for i in members]), encoded)
        if group is not None:
            for i, crop in zip(members, group):
                crops[i] = crop
    n_cpu = len(batch["label"]) - len(encoded)
    keep = torch.tensor([True] * n_cpu + [c is not None for c in crops])
    skipped = batch["skipped"] + int((~keep).sum())
    good = [c for c in crops if c is not None]
    if n_cpu + len(good) == 0:
        return {"image": torch.empty(0), "skipped": skipped, "empty": True}
    out = {k: v for k, v in batch.items() if k != "encoded"}
    for key in ("label", "generator", "index"):
        out[key] = batch[key][keep.to(batch[key].device)]
    parts = ([batch["image"].to(device)] if n_cpu else []) + ([torch.stack(good)] if good else [])
    out["image"] = torch.cat(parts)
    out["skipped"] = skipped
    return out
