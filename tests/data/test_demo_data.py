"""Tests for the embedded demo dataset builder (AutoGAN-style decoder fakes vs shipped photo crops)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.data.demo import DEMO_GENERATORS, build_demo_dataset, main

SIZE = 32
PER_CLASS = 40  # val_fraction 0.2 -> 32 train + 8 val per class; decoder training dominates the cost


def _pngs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64).mean(-1) / 255.0


def _log_power(path: Path) -> np.ndarray:
    grey = _grey(path)
    return np.log(np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))) ** 2 + 1e-12)


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    return build_demo_dataset(out, seed=0, size=SIZE, per_class=PER_CLASS, progress=False)


def test_layout_and_counts(small_build: Path):
    assert sorted(p.name for p in small_build.iterdir() if p.is_dir()) == sorted(DEMO_GENERATORS)
    for generator in DEMO_GENERATORS:
        for split, count in (("train", 32), ("val", 8)):
            for class_dir in ("ai", "nature"):
                files = list((small_build / generator / split / class_dir).glob("*.png"))
                assert len(files) == count, (generator, split, class_dir)


def test_manifest_lists_every_file_with_its_sha256(small_build: Path):
    import hashlib

    manifest = json.loads((small_build / "MANIFEST.json").read_text())
    assert manifest["params"]["seed"] == 0 and manifest["params"]["size"] == SIZE
    assert manifest["params"]["generators"] == list(DEMO_GENERATORS)
    files = manifest["files"]
    assert set(files) == set(_pngs(small_build))
    for rel, sha in files.items():
        assert hashlib.sha256((small_build / rel).read_bytes()).hexdigest() == sha


def test_real_and_fake_share_size_mode_and_format(small_build: Path):
    seen = set()
    for path in small_build.rglob("*.png"):
        with Image.open(path) as image:
            seen.add((image.format, image.mode, image.size, tuple(sorted(image.info))))
    assert seen == {("PNG", "RGB", (SIZE, SIZE), ())}


def test_same_seed_gives_identical_bytes(small_build: Path, tmp_path: Path):
    # A generator's folder does not depend on which other generators are built alongside it.
    again = build_demo_dataset(tmp_path / "again", seed=0, size=SIZE, per_class=PER_CLASS,
                               generators=("deconv",), progress=False)
    expected = {k: v for k, v in _pngs(small_build).items() if k.startswith("deconv/")}
    assert _pngs(again) == expected


def test_different_seed_gives_different_bytes(small_build: Path, tmp_path: Path):
    other = build_demo_dataset(tmp_path / "other", seed=1, size=SIZE, per_class=PER_CLASS,
                               generators=("bilinear_conv",), progress=False)
    ours, theirs = _pngs(small_build), _pngs(other)
    shared = [k for k in theirs if k in ours]
    assert shared and all(ours[k] != theirs[k] for k in shared)


def test_real_crops_differ_between_generators(small_build: Path):
    nature = {g: set(_pngs(small_build / g / "train" / "nature").values()) for g in DEMO_GENERATORS}
    assert not nature["deconv"] & nature["nearest_conv"]
    assert not nature["nearest_conv"] & nature["bilinear_conv"]


def test_rebuild_is_a_no_op_until_files_change(tmp_path: Path):
    kwargs = dict(seed=3, size=SIZE, per_class=5, generators=("nearest_conv",), progress=False)
    out = build_demo_dataset(tmp_path / "d", **kwargs)
    first = _pngs(out)
    victim = out / sorted(first)[0]
    mtime = victim.stat().st_mtime_ns

    start = time.perf_counter()
    build_demo_dataset(out, **kwargs)
    assert time.perf_counter() - start < 1.0
    assert victim.stat().st_mtime_ns == mtime

    victim.write_bytes(b"corrupted")
    build_demo_dataset(out, **kwargs)
    assert _pngs(out) == first


def test_cli_reuses_a_matching_build(small_build: Path):
    argv = ["--out", str(small_build), "--seed", "0", "--size", str(SIZE), "--per-class", str(PER_CLASS), "--no-progress"]
    before = (small_build / "MANIFEST.json").stat().st_mtime_ns
    assert main(argv) == small_build
    assert (small_build / "MANIFEST.json").stat().st_mtime_ns == before


def test_unknown_generator_lists_valid_names(tmp_path: Path):
    with pytest.raises(ValueError, match="valid ones: deconv, nearest_conv, bilinear_conv"):
        build_demo_dataset(tmp_path, generators=("deconv", "stylegan"), progress=False)


def test_bad_split_parameters_are_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="val_fraction"):
        build_demo_dataset(tmp_path, val_fraction=1.5, progress=False)
    with pytest.raises(ValueError, match="per_class"):
        build_demo_dataset(tmp_path, per_class=1, progress=False)


def test_refuses_to_overwrite_foreign_pngs(tmp_path: Path):
    folder = tmp_path / "deconv" / "train" / "ai"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "mine.png")
    with pytest.raises(FileExistsError, match="force=True"):
        build_demo_dataset(tmp_path, generators=("deconv",), progress=False)
    assert (folder / "mine.png").exists()


def test_refuses_to_replace_a_foreign_manifest(tmp_path: Path):
    (tmp_path / "MANIFEST.json").write_text('{"owner": "someone else"}')
    with pytest.raises(FileExistsError, match="not written by the demo dataset builder"):
        build_demo_dataset(tmp_path, generators=("deconv",), progress=False)
    assert json.loads((tmp_path / "MANIFEST.json").read_text()) == {"owner": "someone else"}


def test_fakes_carry_an_upsampling_fingerprint(small_build: Path):
    """Relative to its low band, a fake holds less energy above a quarter of the sampling rate (the band
    a x2 up-sampler must synthesise); transposed convolution also leaves its checkerboard peak at the
    (N/2, N/2) alias frequency."""
    n = SIZE
    yy, xx = np.indices((n, n)) - n // 2
    radius = np.hypot(yy, xx)
    off_axis = (np.abs(xx) > 1) & (np.abs(yy) > 1)  # skip the cross that the image borders leave
    high_band = (radius >= n / 4) & off_axis
    low_band = (radius >= 1) & (radius < n / 8) & off_axis

    def stats(generator: str, class_dir: str) -> tuple[float, float]:
        spectra = [_log_power(p) for p in (small_build / generator).glob(f"*/{class_dir}/*.png")]
        high_vs_low = np.mean([np.log(np.exp(s[high_band]).mean() / np.exp(s[low_band]).mean()) for s in spectra])
        corner_peak = np.mean([s[0, 0] - s[1:4, 1:4].mean() for s in spectra])  # (N/2, N/2) after fftshift
        return high_vs_low, corner_peak

    for generator in DEMO_GENERATORS:
        fake_high, _ = stats(generator, "ai")
        real_high, _ = stats(generator, "nature")
        assert fake_high < real_high - 0.3, generator

    _, fake_peak = stats("deconv", "ai")
    _, real_peak = stats("deconv", "nature")
    assert fake_peak > real_peak + 2.0


def test_fakes_keep_colour_and_content(small_build: Path):
    """Fakes are not trivially separable by colour: mean brightness overlaps with the real crops."""
    for generator in DEMO_GENERATORS:
        fake = [_grey(p).mean() for p in (small_build / generator).glob("*/ai/*.png")]
        real = [_grey(p).mean() for p in (small_build / generator).glob("*/nature/*.png")]
        assert min(real) < np.median(fake) < max(real), generator
