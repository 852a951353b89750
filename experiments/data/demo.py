"""Embedded demo dataset: real photo crops versus crops re-synthesised by generator-like decoders.

The dataset needs no download. "Real" images are random crops of the photographs that ship inside
scikit-image (``skimage.data``) and scikit-learn (``load_sample_images``). "Fake" images follow the
AutoGAN recipe of Zhang, Karaman and Chang, "Detecting and Simulating Artifacts in GAN Fake Images"
(WIFS 2019): an image is down-sampled and then decoded back to full size by the up-sampling stage
of a generator, which leaves the spectral fingerprint of that up-sampler. Each decoder kind is
one "generator" folder:

* ``deconv``: transposed convolution (stride 2 per x2 step), as in DCGAN-style generators;
* ``nearest_conv``: nearest-neighbour up-sampling followed by a 3x3 convolution;
* ``bilinear_conv``: bilinear up-sampling followed by a 3x3 convolution.

Each decoder is briefly trained on CPU to reconstruct crops from their down-sampled version, so
colours and content are kept and mainly the up-sampling fingerprint remains; one back-projection
step removes their remaining colour error. To keep the task learnable but not trivial, every fake
picks a down factor of 2 or 4 at random, blends the decoder output with a plain bicubic
up-sampling (``alpha * decoded + (1 - alpha) * bicubic``) and gets back a random fraction of the
fine detail the down-sampling removed. Real and fake images share everything else: crop
statistics, size, PNG encoding.

The output follows the GenImage layout ``<out>/<generator>/{train,val}/{ai,nature}/*.png``
(nature = real = label 0, ai = fake = label 1) plus ``<out>/MANIFEST.json`` holding the build
parameters and a sha256 per file. The same seed gives byte-identical files on the same machine.

CLI::

    python -m experiments.data.demo --out data/demo --seed 0 --size 64 --per-class 300
"""

from __future__ import annotations

from experiments.process import progress_bar, use_huge_pages, use_plain_logs

if __name__ == "__main__":  # an entry point: before torch is imported
    use_huge_pages()
    use_plain_logs()

import argparse
import hashlib
import io
import json
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

DEMO_GENERATORS: tuple[str, ...] = ("deconv", "nearest_conv", "bilinear_conv")
BUILDER_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_BUILDER = "experiments.data.demo"
SPLITS = ("train", "val")
CLASS_DIRS = ("nature", "ai")  # label 0, label 1

SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right",
    "hubble_deep_field", "retina", "ihc",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
MIN_SOURCE_PHOTOS = 4

MAX_CROP_SCALE = 4  # crops are squares of side s in [size, MAX_CROP_SCALE * size]
DOWN_FACTORS = (2, 4)  # per fake, drawn uniformly
ALPHA_RANGE = (0.5, 1.0)  # weight of the decoder output against bicubic up-sampling
DETAIL_RANGE = (0.2, 0.6)  # fraction of the detail lost by down-sampling that is added back

DECODER_WIDTH = 16
DECODER_TRAIN_STEPS = 200
DECODER_TRAIN_BATCH = 8
DECODER_TRAIN_PATCH = 32
DECODER_TRAIN_POOL = 256
DECODER_LEARNING_RATE = 3e-3


# ----------------------------------------------------------------------------- source photos


def _skimage_photo(name: str) -> np.ndarray | None:
    """One bundled scikit-image photo as an array, or None when this version does not ship it."""
    import skimage.data as skdata

    aliases = {"ihc": "immunohistochemistry"}
    try:
        if name in ("motorcycle_left", "motorcycle_right"):
            left, right, _ = skdata.stereo_motorcycle()
            return left if name == "motorcycle_left" else right
        loader = getattr(skdata, name, None) or getattr(skdata, aliases.get(name, ""), None)
        return None if loader is None else loader()
    except Exception:  # a missing or undownloadable file: skip it
        return None


def _sklearn_photos() -> dict[str, np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
    except Exception:
        return {}
    return {Path(f).name: img for f, img in zip(bunch.filenames, bunch.images)}


def _to_rgb_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H,W), (H,W,3) or (H,W,4) array -> float (3,H,W) tensor in [0,1]."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    return torch.from_numpy(np.array(array, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0


def load_source_photos(min_side: int = 64) -> list[torch.Tensor]:
    """The shipped photos (fixed order) as (3,H,W) float tensors; those smaller than ``min_side`` are dropped."""
    found: list[torch.Tensor] = []
    for name in SKIMAGE_PHOTOS:
        image = _skimage_photo(name)
        if image is not None:
            found.append(_to_rgb_tensor(image))
    sklearn_images = _sklearn_photos()
    found += [_to_rgb_tensor(sklearn_images[n]) for n in SKLEARN_PHOTOS if n in sklearn_images]
    found = [p for p in found if min(p.shape[-2:]) >= min_side]
    if len(found) < MIN_SOURCE_PHOTOS:
        raise RuntimeError(
            f"Only {len(found)} source photos of at least {min_side} px were found in scikit-image "
            f"({', '.join(SKIMAGE_PHOTOS)}) and scikit-learn ({', '.join(SKLEARN_PHOTOS)}); "
            f"{MIN_SOURCE_PHOTOS} are needed. Install scikit-image and scikit-learn with their "
            "bundled data, or lower `size`."
        )
    return found


def sample_crops(photos: Sequence[torch.Tensor], count: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` random square crops of side s in [size, 4*size], area-resized to (count,3,size,size)."""
    crops = torch.empty(count, 3, size, size)
    for i in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        height, width = photo.shape[-2:]
        side = int(rng.integers(size, min(MAX_CROP_SCALE * size, height, width) + 1))
        top = int(rng.integers(height - side + 1))
        left = int(rng.integers(width - side + 1))
        patch = photo[None, :, top : top + side, left : left + side]
        crops[i] = F.interpolate(patch, size=(size, size), mode="area")[0] if side != size else patch[0]
    return crops


# ----------------------------------------------------------------------------- decoders


class UpsamplingDecoder(nn.Module):
    """Generator-like decoder that up-samples by 2 per step with one AutoGAN up-sampler.

    Zhang, Karaman and Chang, "Detecting and Simulating Artifacts in GAN Fake Images", 2019: the
    up-sampling layers of a GAN generator (transposed convolution, or interpolation + convolution)
    leave periodic spectral peaks. ``head`` lifts RGB to ``width`` channels, one shared ``up`` block
    is applied ``log2(factor)`` times, and ``tail`` maps back to RGB.
    """

    def __init__(self, upsampler: str, width: int = DECODER_WIDTH):
        super().__init__()
        if upsampler not in DEMO_GENERATORS:
            raise ValueError(f"Unknown decoder kind {upsampler!r}; valid ones: {', '.join(DEMO_GENERATORS)}")
        self.upsampler = upsampler
        self.head = nn.Conv2d(3, width, 3, padding=1, padding_mode="replicate")
        if upsampler == "deconv":
            self.up = nn.ConvTranspose2d(width, width, kernel_size=4, stride=2, padding=1)
        else:
            mode = "nearest" if upsampler == "nearest_conv" else "bilinear"
            upsample = nn.Upsample(scale_factor=2, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
            self.up = nn.Sequential(upsample, nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate"))
        self.tail = nn.Conv2d(width, 3, 3, padding=1, padding_mode="replicate")

    def forward(self, low: torch.Tensor, factor: int) -> torch.Tensor:
        steps = int(factor).bit_length() - 1
        if factor < 2 or 2**steps != factor:
            raise ValueError(f"factor must be a power of two >= 2, got {factor}")
        h = F.leaky_relu(self.head(low), 0.2)
        for _ in range(steps):
            h = F.leaky_relu(self.up(h), 0.2)
        return self.tail(h)


def train_decoder(upsampler: str, photos: Sequence[torch.Tensor], seed: int) -> UpsamplingDecoder:
    """Briefly train a decoder (Adam, L1) to rebuild crops from their 2x / 4x area-down-sampled version."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _name_key(upsampler), 1]))
    pool = sample_crops(photos, DECODER_TRAIN_POOL, DECODER_TRAIN_PATCH, rng)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**31)))
        decoder = UpsamplingDecoder(upsampler)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=DECODER_LEARNING_RATE)
    for step in range(DECODER_TRAIN_STEPS):
        factor = DOWN_FACTORS[step % len(DOWN_FACTORS)]
        target = pool[torch.from_numpy(rng.choice(DECODER_TRAIN_POOL, DECODER_TRAIN_BATCH, replace=False))]
        loss = F.l1_loss(decoder(F.avg_pool2d(target, factor), factor), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return decoder.eval()


def back_project(decoded: torch.Tensor, low: torch.Tensor, factor: int) -> torch.Tensor:
    """Correct the decoder's colour and low-frequency error so that ``avg_pool(decoded) ~= low``.

    One step of iterative back-projection (Irani and Peleg, "Improving resolution by image
    registration", 1991): the residual at low resolution is up-sampled smoothly and added back, so the
    decoder's high-frequency up-sampling fingerprint is kept while colours match the source.
    """
    residual = low - F.avg_pool2d(decoded, factor)
    return decoded + F.interpolate(residual, scale_factor=factor, mode="bicubic", align_corners=False)


@torch.no_grad()
def synthesise_fakes(decoder: UpsamplingDecoder, crops: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """AutoGAN-style fakes from clean crops (N,3,H,W) -> (N,3,H,W), with per-image random strengths.

    Each crop is area-down-sampled by 2 or 4, decoded and back-projected, blended with a bicubic
    up-sampling (weight ``alpha`` in ``ALPHA_RANGE`` on the decoder), and a fraction ``beta`` in
    ``DETAIL_RANGE`` of the detail that the down-sampling removed is added back, as a generator
    synthesises some fine texture. Lower ``alpha`` weakens the fingerprint; higher ``beta`` weakens
    the missing-detail cue.
    """
    factors = rng.choice(DOWN_FACTORS, size=len(crops))
    alphas = torch.from_numpy(rng.uniform(*ALPHA_RANGE, size=len(crops))).float().view(-1, 1, 1, 1)
    details = torch.from_numpy(rng.uniform(*DETAIL_RANGE, size=len(crops))).float().view(-1, 1, 1, 1)
    fakes = torch.empty_like(crops)
    for factor in DOWN_FACTORS:
        idx = torch.from_numpy(np.flatnonzero(factors == factor))
        if len(idx) == 0:
            continue
        low = F.avg_pool2d(crops[idx], factor)
        decoded = back_project(decoder(low, factor), low, factor)
        bicubic = F.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False)
        detail = crops[idx] - bicubic
        fakes[idx] = alphas[idx] * decoded + (1 - alphas[idx]) * bicubic + details[idx] * detail
    return fakes.clamp(0, 1)


# ----------------------------------------------------------------------------- files and manifest


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _png_bytes(image: torch.Tensor) -> bytes:
    """(3,H,W) float in [0,1] -> PNG bytes written with fixed options (no metadata, no timestamps)."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_is_current(out_dir: Path, params: dict) -> bool:
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("params") != params:
        return False
    files = manifest.get("files", {})
    return all((out_dir / rel).is_file() and _sha256_file(out_dir / rel) == sha for rel, sha in files.items())


def _clear_previous_build(out_dir: Path, generators: Sequence[str], force: bool) -> None:
    """Remove the files of an earlier demo build; refuse to overwrite PNGs this builder did not write."""
    manifest_path = out_dir / MANIFEST_NAME
    listed: set[str] = set()
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            manifest = {}
        if manifest.get("builder") == MANIFEST_BUILDER:
            listed = set(manifest.get("files", {}))
        elif not force:
            raise FileExistsError(
                f"{manifest_path} was not written by the demo dataset builder; choose another output "
                "directory or pass force=True (--force) to replace it."
            )
        manifest_path.unlink()
    for rel in listed:
        (out_dir / rel).unlink(missing_ok=True)
    for generator in generators:
        for split in SPLITS:
            for class_dir in CLASS_DIRS:
                folder = out_dir / generator / split / class_dir
                strangers = sorted(folder.glob("*.png")) if folder.is_dir() else []
                if strangers and not force:
                    raise FileExistsError(
                        f"{folder} already holds {len(strangers)} PNG files not listed in {manifest_path}; "
                        "choose an empty output directory or pass force=True (--force) to overwrite them."
                    )
                for path in strangers:
                    path.unlink()


def _split_sizes(per_class: int, val_fraction: float) -> dict[str, int]:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(round(per_class * val_fraction))
    n_train = per_class - n_val
    if n_val < 1 or n_train < 1:
        raise ValueError(
            f"per_class={per_class} with val_fraction={val_fraction} leaves {n_train} train / {n_val} val "
            "images per class; raise per_class so both splits get at least one image."
        )
    return {"train": n_train, "val": n_val}


@contextmanager
def _deterministic_torch() -> Iterator[None]:
    """Run the block with deterministic algorithms on one intra-op thread, then restore both settings.

    One thread makes the float results independent of the caller's thread count (so the bytes are
    too), and the tiny convolutions here run faster single-threaded on a busy CPU.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)


# ----------------------------------------------------------------------------- public entry points


def build_demo_dataset(
    out_dir: str | Path,
    seed: int = 0,
    size: int = 64,
    per_class: int = 300,
    val_fraction: float = 0.2,
    generators: Sequence[str] = DEMO_GENERATORS,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write the demo dataset to ``out_dir`` in the GenImage layout and return ``out_dir``.

    ``<out_dir>/<generator>/{train,val}/{ai,nature}/*.png`` with ``per_class`` images per class and
    generator, ``val_fraction`` of them in ``val``. Rebuilding with the same parameters is a no-op
    when ``MANIFEST.json`` and every listed file still match, unless ``force`` is true.
    """
    if isinstance(generators, str):
        generators = (generators,)
    generators = tuple(generators)
    unknown = [g for g in generators if g not in DEMO_GENERATORS]
    if unknown or not generators:
        raise ValueError(
            f"Unknown demo generator(s) {unknown or '(none given)'}; valid ones: {', '.join(DEMO_GENERATORS)}"
        )
    if len(set(generators)) != len(generators):
        raise ValueError(f"Duplicate demo generator names in {list(generators)}")
    if size < 16 or size % 4:
        raise ValueError(f"size must be a multiple of 4 and at least 16 px, got {size}")
    counts = _split_sizes(int(per_class), float(val_fraction))

    out_dir = Path(out_dir)
    params = {
        "builder_version": BUILDER_VERSION,
        "seed": int(seed),
        "size": int(size),
        "per_class": int(per_class),
        "val_fraction": float(val_fraction),
        "counts": counts,
        "generators": list(generators),
        "down_factors": list(DOWN_FACTORS),
        "alpha_range": list(ALPHA_RANGE),
        "detail_range": list(DETAIL_RANGE),
    }
    if not force and _manifest_is_current(out_dir, params):
        return out_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_build(out_dir, generators, force)
    photos = load_source_photos(min_side=size)
    files: dict[str, str] = {}
    total = len(generators) * 2 * per_class
    with _deterministic_torch(), progress_bar(total, "demo dataset", unit="img", enabled=progress, leave=True) as bar:
        for generator in generators:
            bar.set_postfix_str(f"{generator}: training decoder")
            decoder = train_decoder(generator, photos, seed)
            rng = np.random.default_rng(np.random.SeedSequence([seed, _name_key(generator), 2]))
            real = sample_crops(photos, per_class, size, rng)
            fake = synthesise_fakes(decoder, sample_crops(photos, per_class, size, rng), rng)
            bar.set_postfix_str(f"{generator}: writing")
            for class_dir, images in (("nature", real), ("ai", fake)):
                offset = 0
                for split in SPLITS:
                    folder = out_dir / generator / split / class_dir
                    folder.mkdir(parents=True, exist_ok=True)
                    for i in range(counts[split]):
                        data = _png_bytes(images[offset + i])
                        path = folder / f"{class_dir}_{offset + i:04d}.png"
                        path.write_bytes(data)
                        files[path.relative_to(out_dir).as_posix()] = hashlib.sha256(data).hexdigest()
                        bar.update(1)
                    offset += counts[split]
    manifest = {"builder": MANIFEST_BUILDER, "params": params, "files": dict(sorted(files.items()))}
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.data.demo",
        description="Build the embedded demo dataset (real photo crops vs generator-decoder fakes, GenImage layout).",
    )
    parser.add_argument("--out", default="data/demo", help="output directory (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--per-class", type=int, default=300, help="images per class and generator")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument(
        "--generators", nargs="+", default=list(DEMO_GENERATORS), help=f"subset of {', '.join(DEMO_GENERATORS)}"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if MANIFEST.json matches")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    out = build_demo_dataset(
        args.out, seed=args.seed, size=args.size, per_class=args.per_class, val_fraction=args.val_fraction,
        generators=args.generators, force=args.force, progress=not args.no_progress,
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
