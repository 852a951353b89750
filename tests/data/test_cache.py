"""``data.cache=true``: each deterministic split packed once (decoded LitData pack), the same batches as the
files, invalidated by file or preprocessing changes, built in ``prepare_data``."""

from __future__ import annotations

import os

import torch

from experiments.data import cache as cache_mod
from experiments.data.dataset import ImageDataset
from experiments.data.shards import META_NAME, PackedSplit, read_info
from tests.conftest import collect_batches as _all, make_genimage_tree, small_datamodule as _dm


def test_cached_batches_equal_file_batches(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=5, size=32)
    plain, cached = _dm(root), _dm(root, cache=True)
    for split in ("train", "val", "test"):
        assert isinstance(cached.datasets[split], PackedSplit)
        loader = "train_dataloader" if split == "train" else f"{split}_dataloader"
        a = _all(plain._loader(split, shuffle=False))
        b = _all(cached._loader(split, shuffle=False))
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["image"], b["image"]), split  # uint8 storage is lossless
        assert getattr(cached, loader)() is not None
    entries = list((root.parent / "cache").iterdir())
    assert len(entries) == 3 and all((e / META_NAME).is_file() and read_info(e).mode == "decoded" for e in entries)


def test_shuffled_train_loader_yields_every_image_once(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=5, size=32)
    dm = _dm(root, cache=True)
    index = _all(dm.train_dataloader())["index"]
    assert sorted(index.tolist()) == list(range(len(dm.splits["train"])))
    assert index.tolist() != sorted(index.tolist())  # shuffled


def test_prepare_data_builds_the_packs_and_setup_reads_them(tmp_path, monkeypatch):
    from experiments.data.datamodule import DetectorDataModule

    root = make_genimage_tree(tmp_path / "g", n=4, size=32)
    dm = DetectorDataModule(name="t", root=str(root), crop_size=24, resize_size=None, batch_size=8, num_workers=0,
                            val_fraction=0.25, cache=True, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()  # what Lightning runs on the local rank 0 of each node
    assert len(list((tmp_path / "cache").iterdir())) == 3

    def boom(*a, **k):
        raise AssertionError("the pack was rebuilt")

    monkeypatch.setattr(cache_mod, "write_pack", boom)
    dm.setup()  # every rank: reads the packs
    again = _dm(root, cache=True, cache_dir=str(tmp_path / "cache"))
    assert len(_all(again.val_dataloader())["image"]) == len(again.splits["val"])


def test_cache_is_invalidated_by_file_and_preprocessing_changes(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=4, size=32)
    _dm(root, cache=True)
    keys = set(os.listdir(root.parent / "cache"))
    _dm(root, cache=True, crop_size=16)  # preprocessing change: three new entries
    keys2 = set(os.listdir(root.parent / "cache"))
    assert len(keys2 - keys) == 3
    victim = sorted((root / "gen_a" / "val" / "ai").iterdir())[0]
    victim.write_bytes(victim.read_bytes())
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    _dm(root, cache=True, crop_size=16)  # the rewritten file is in the test split only
    assert len(set(os.listdir(root.parent / "cache")) - keys2) == 1


def test_bad_files_are_still_counted_as_skipped(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=4, size=32)
    (root / "gen_a" / "val" / "ai" / "empty.png").write_bytes(b"")
    (root / "gen_b" / "val" / "nature" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    dm = _dm(root, cache=True)
    assert dm.datasets["test"].n_bad == 2
    got = _all(dm.test_dataloader())
    assert got["skipped"] == 2 and len(got["image"]) == len(dm.splits["test"]) - 2
    again = _all(_dm(root, cache=True).test_dataloader())  # from the pack: same count
    assert again["skipped"] == 2


def test_random_train_preprocessing_is_not_cached(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=4, size=32)
    dm = _dm(root, cache=True, random_crop=True)
    assert isinstance(dm.datasets["train"], ImageDataset)
    assert isinstance(dm.datasets["val"], PackedSplit)
    assert len(list((root.parent / "cache").iterdir())) == 2


def test_loader_workers_read_the_pack(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=4, size=32)
    dm = _dm(root, cache=True, num_workers=2, persistent_workers=False)
    plain = _dm(root)
    a, b = _all(dm.test_dataloader()), _all(plain.test_dataloader())
    order = torch.argsort(a["index"])  # the workers interleave their shares of the records
    assert torch.equal(a["image"][order], b["image"]) and torch.equal(a["index"][order], b["index"])
