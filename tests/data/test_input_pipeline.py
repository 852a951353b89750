"""The input pipeline: uint8 batches, packed-split reads, device-side JPEG decoding, caches outside the
dataset, and a data check that is decoded once (its per-file results kept for the jobs of a sweep)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.data.audit import scan_dataset
from experiments.data import datamodule as datamodule_mod
from experiments.data.shards import PackedSplit
from experiments.process import default_cache_dir
from experiments.data.dataset import ImageDataset, collate_skipping
from experiments.data.datamodule import DetectorDataModule
from experiments.data.device_decode import (
    EncodedImageDataset,
    collate_encoded,
    decode_on_device,
    device_decodable,
)
from experiments.data.layouts import Sample
from experiments.data.transforms import Preprocess
from tests.conftest import make_genimage_tree, small_datamodule as _dm, toy_image


def test_packed_split_items_equal_file_items(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=5, size=32)
    dm, plain = _dm(root, cache=True), _dm(root)
    dataset = dm.datasets["train"]
    assert isinstance(dataset, PackedSplit)
    for i in [5, 0, 3, 7]:
        got, expected = dataset[i], plain.datasets["train"][i]
        assert got["image"].dtype == torch.uint8
        for key in ("image", "label", "generator", "index"):
            assert torch.equal(got[key], expected[key]), key


def test_cache_works_on_a_read_only_dataset(tmp_path):
    root = make_genimage_tree(tmp_path / "ro", n=3, size=32)
    for folder, dirs, files in os.walk(root):
        for name in files:
            os.chmod(Path(folder) / name, stat.S_IRUSR)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    try:
        dm = _dm(root, cache=True, cache_dir=str(tmp_path / "cache"))
        assert all(isinstance(d, PackedSplit) for d in dm.datasets.values())
        assert not (root / ".cache").exists()
        assert any((tmp_path / "cache").iterdir())
    finally:
        for folder, dirs, files in os.walk(root):
            os.chmod(folder, stat.S_IRWXU)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "spectral-detector-suite"
    dm = DetectorDataModule(name="t", root=str(tmp_path / "data"))
    assert dm.cache_dir == default_cache_dir()


def test_configs_put_the_cache_under_paths_cache_dir(tmp_path):
    from tests.conftest import compose_config

    cfg = compose_config(["data=genimage_tiny", "data.root=/data/genimage"], tmp_path)
    assert cfg.data.cache_dir == f"{cfg.paths.cache_dir}/images"
    assert not str(cfg.data.cache_dir).startswith(cfg.data.root)


def test_num_workers_auto_uses_the_cores_of_this_process(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    assert datamodule_mod.default_num_workers() == 12
    assert datamodule_mod.default_num_workers(devices_per_node=4) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert datamodule_mod.default_num_workers() == datamodule_mod.MAX_AUTO_WORKERS
    assert DetectorDataModule(name="t", root=str(tmp_path), num_workers="auto").num_workers == 16
    with pytest.raises(ValueError, match="data.num_workers"):
        DetectorDataModule(name="t", root=str(tmp_path), num_workers=-1)


def test_loader_settings(tmp_path):
    dm = _dm(make_genimage_tree(tmp_path / "g", n=3, size=32), num_workers=1, prefetch_factor=3)
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and loader.prefetch_factor == 3 and loader.persistent_workers
    assert next(iter(loader))["image"].dtype == torch.uint8


# --------------------------------------------------------------------------- data check cache


def test_data_check_is_decoded_once_and_read_back(tmp_path, monkeypatch):
    dm = _dm(make_genimage_tree(tmp_path / "g", n=3, size=32))
    first = scan_dataset(dm, progress=False, cache_dir=tmp_path / "checks")
    from experiments.data.audit import inspection

    monkeypatch.setattr(inspection, "inspect_file", lambda *a: pytest.fail("decoded again"))
    again = scan_dataset(dm, progress=False, cache_dir=tmp_path / "checks")
    assert again.records == first.records and again.duplicates == first.duplicates


def test_data_check_cache_misses_when_a_file_changes(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=3, size=32)
    dm = _dm(root)
    scan_dataset(dm, progress=False, cache_dir=tmp_path / "checks")
    victim = Path(dm.splits["train"][0].path)
    victim.write_bytes(b"not an image")
    report = scan_dataset(dm, progress=False, cache_dir=tmp_path / "checks")
    assert [r.path for r in report.unreadable] == [str(victim)]


# --------------------------------------------------------------------------- device decode


def _write(path: Path, array: np.ndarray, fmt: str, **kw) -> Sample:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt, **kw)
    return Sample(str(path), label=int("fake" in path.name), generator="g")


def _mixed_samples(tmp_path: Path) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = [_write(tmp_path / f"real_{i}.jpg", toy_image(rng, 40 + 8 * i, False), "JPEG", quality=90)
               for i in range(3)]
    samples.append(_write(tmp_path / "fake_png.png", toy_image(rng, 48, True), "PNG"))
    samples.append(_write(tmp_path / "fake_small.jpg", toy_image(rng, 16, True), "JPEG"))
    broken = tmp_path / "fake_broken.jpg"
    broken.write_bytes((tmp_path / "real_0.jpg").read_bytes()[:200])
    samples.append(Sample(str(broken), label=1, generator="g"))
    return samples


def test_device_decodable_sends_only_plain_jpegs(tmp_path):
    rng = np.random.default_rng(1)
    plain = _write(tmp_path / "a.jpg", toy_image(rng, 32, False), "JPEG")
    png = _write(tmp_path / "b.png", toy_image(rng, 32, False), "PNG")
    cmyk = tmp_path / "c.jpg"
    Image.fromarray(toy_image(rng, 32, False)).convert("CMYK").save(cmyk, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "d.jpg"
    Image.fromarray(toy_image(rng, 32, False)).save(rotated, "JPEG", exif=exif.tobytes())
    assert device_decodable(plain.path) is not None
    assert device_decodable(png.path) is None
    assert device_decodable(cmyk) is None
    assert device_decodable(rotated) is None


@pytest.mark.parametrize("resize_size", [None, 40])
def test_device_decode_matches_the_cpu_path(tmp_path, resize_size):
    samples = _mixed_samples(tmp_path)
    prep = Preprocess(crop_size=24, resize_size=resize_size)
    cpu = collate_skipping([ImageDataset(samples, prep, ["g"])[i] for i in range(len(samples))])
    encoded = EncodedImageDataset(samples, prep, ["g"])
    batch = collate_encoded([encoded[i] for i in range(len(samples))], prep)
    assert len(batch["encoded"]) >= 4 and batch["image"].shape[0] == 1  # the PNG was decoded on the CPU
    got = decode_on_device(batch, "cpu")
    # the broken JPEG, and without resizing the one smaller than the crop
    assert int(got["skipped"]) == int(cpu["skipped"]) == (2 if resize_size is None else 1)
    order = torch.argsort(got["index"])
    assert torch.equal(got["index"][order], cpu["index"])
    assert torch.equal(got["label"][order], cpu["label"])
    diff = (got["image"][order].float() - cpu["image"].float()).abs()
    if resize_size is None:
        assert diff.max() <= 1  # the same crop; only the JPEG decoders' rounding may differ
    else:
        assert diff.mean() < 2.0  # torch's and PIL's antialiased bicubic filters


def test_device_decode_of_an_all_bad_batch_is_empty(tmp_path):
    samples = _mixed_samples(tmp_path)[-2:]
    prep = Preprocess(crop_size=24, resize_size=None)
    encoded = EncodedImageDataset(samples, prep, ["g"])
    got = decode_on_device(collate_encoded([encoded[0], encoded[1], None], prep), "cpu")
    assert got.get("empty") and int(got["skipped"]) == 3


def test_device_decode_refuses_pil_transforms():
    with pytest.raises(ValueError, match="data.decode=cpu"):
        EncodedImageDataset([], Preprocess(24, None, equalizer=lambda im: im), [])


def test_device_decode_falls_back_to_workers_without_cuda(tmp_path, caplog):
    dm = _dm(make_genimage_tree(tmp_path / "g", n=3, size=32), decode="device")
    batch = next(iter(dm.train_dataloader()))
    assert "encoded" not in batch and batch["image"].dtype == torch.uint8
    assert "not on a CUDA device" in caplog.text
    with pytest.raises(ValueError, match="data.decode"):
        DetectorDataModule(name="t", root=str(tmp_path), decode="gpu-please")
