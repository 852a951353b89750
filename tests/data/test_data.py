"""The GenImage and derm datasets, the datamodule splits and the layout errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.data.datamodule import DetectorDataModule
from experiments.data.layouts import DatasetLayoutError, Derm, GenImageFlat, Sample, holdout_split, limit_per_class
from experiments.training.builders import build_datamodule
from tests.conftest import compose_config, make_genimage_tree


def make_dm(root, **kw) -> DetectorDataModule:
    args = dict(name="t", root=str(root), crop_size=32, resize_size=None, batch_size=4, num_workers=0,
                val_fraction=0.34)
    args.update(kw)
    dm = DetectorDataModule(**args)
    dm.setup()
    return dm


def test_genimage_two_generators(genimage_tree):
    dm = make_dm(genimage_tree)
    assert dm.generator_names == ["gen_a", "gen_b"]
    n = {k: len(v) for k, v in dm.splits.items()}
    # 6 train images per class per generator: 2 held out for val (34%), 4 kept; val folder (6) is the test split
    assert n == {"train": 2 * 2 * 4, "val": 2 * 2 * 2, "test": 2 * 2 * 6}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["image"].dtype == torch.uint8  # uint8 until the model's device (DetectorModule.on_after_batch_transfer)
    assert set(batch["label"].tolist()) <= {0.0, 1.0}
    test = dm.datasets["test"]
    for i in range(len(test)):
        sample = test.samples[i]
        assert sample.label == (1 if "/ai/" in sample.path else 0)
        assert sample.generator in sample.path


def test_generators_subset_and_generator_kept(genimage_tree):
    dm = make_dm(genimage_tree, generators=["gen_b"])
    assert {s.generator for split in dm.splits.values() for s in split} == {"gen_b"}


def test_split_is_deterministic_and_disjoint(genimage_tree):
    a, b = make_dm(genimage_tree), make_dm(genimage_tree)
    assert [s.path for s in a.splits["val"]] == [s.path for s in b.splits["val"]]
    assert not {s.path for s in a.splits["train"]} & {s.path for s in a.splits["val"]}
    c = make_dm(genimage_tree, split_seed=1)
    assert [s.path for s in a.splits["val"]] != [s.path for s in c.splits["val"]]


def test_split_does_not_depend_on_where_the_dataset_lives(tmp_path):
    """The same files under two different roots (two clones, two machines) get the same val and capped splits."""
    def relative_splits(root):
        dm = make_dm(root, max_per_class=4)
        return {split: [os.path.relpath(s.path, root) for s in samples] for split, samples in dm.splits.items()}

    near = make_genimage_tree(tmp_path / "a", n=12)
    far = tmp_path / "some" / "much" / "longer" / "location"
    far.parent.mkdir(parents=True)
    shutil.copytree(near, far)
    assert relative_splits(near) == relative_splits(far)
    # and the val choice really is seeded by the relative path (it changes with the seed, not with the location)
    assert relative_splits(near)["val"] != {
        split: [os.path.relpath(s.path, near) for s in samples]
        for split, samples in make_dm(near, max_per_class=4, split_seed=1).splits.items()}["val"]


def test_samples_carry_their_path_relative_to_the_root(genimage_tree):
    """A scanned sample knows its path relative to the dataset root, whatever root it was scanned from."""
    for root in (genimage_tree, Path(os.path.relpath(genimage_tree))):
        for sample in GenImageFlat().folders(root)["train"]:
            assert sample.relpath == Path(sample.path).relative_to(root).as_posix()
            assert sample.relpath.startswith(f"{sample.generator}/train/")


def test_split_hashes_the_relative_path_and_nothing_else():
    """Two samples lists that differ only in where the files are have the same seeded hold-out and cap; a change of
    the relative paths changes them."""
    def samples(base: str, names: list[str]) -> list[Sample]:
        return [Sample(f"{base}/{n}", int("ai" in n), "g", n) for n in names]

    names = [f"g/train/{cls}/{i:03d}.png" for cls in ("ai", "nature") for i in range(20)]
    here, there = samples("/one/place", names), samples("/another/much/longer/place", names)
    relative = [[s.relpath for s in part] for part in holdout_split(here, 0.25, 0)]
    assert relative == [[s.relpath for s in part] for part in holdout_split(there, 0.25, 0)]
    assert [s.relpath for s in limit_per_class(here, 5, 0)] == [s.relpath for s in limit_per_class(there, 5, 0)]
    renamed = samples("/one/place", [n.replace("g/", "h/") for n in names])
    assert [[s.relpath.replace("h/", "g/") for s in part] for part in holdout_split(renamed, 0.25, 0)] != relative


def test_holdout_rejects_bad_fraction(genimage_tree):
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(GenImageFlat().folders(genimage_tree)["train"], 1.5, 0)


def test_missing_root_from_config_names_key(tmp_path):
    cfg = compose_config(["data=genimage_tiny"], tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"data.root is not set.*data.root=/path/to/genimage_tiny"):
        build_datamodule(cfg)


def test_nonexistent_root_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"(?s)does not exist.*Expected layout.*train/.*ai/.*nature/"):
        make_dm(tmp_path / "nowhere")


def test_swapped_class_names_are_reported(genimage_tree):
    (genimage_tree / "gen_a" / "train" / "ai").rename(genimage_tree / "gen_a" / "train" / "fake")
    with pytest.raises(DatasetLayoutError, match=r"(?s)gen_a/train/ai is missing \(found: \['fake', 'nature'\]\)"):
        GenImageFlat().folders(genimage_tree)


def test_generator_without_val_folder(genimage_tree):
    shutil.rmtree(genimage_tree / "gen_b" / "val")
    with pytest.raises(DatasetLayoutError, match="generator 'gen_b' has no 'val' folder"):
        GenImageFlat().folders(genimage_tree)


def test_images_at_wrong_depth(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    Image.new("RGB", (32, 32)).save(root / "x.png")
    with pytest.raises(DatasetLayoutError, match="wrong depth"):
        GenImageFlat().folders(root)


def test_empty_class_folder(genimage_tree):
    for f in (genimage_tree / "gen_a" / "val" / "nature").iterdir():
        f.unlink()
    with pytest.raises(DatasetLayoutError, match="holds no images"):
        GenImageFlat().folders(genimage_tree)


def test_unknown_generator(genimage_tree):
    with pytest.raises(DatasetLayoutError, match=r"available generators: \['gen_a', 'gen_b'\]"):
        GenImageFlat().folders(genimage_tree, generators=["midjourney"])


def test_derm_layout_with_custom_class_names(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for cls in ("benign_real", "synth"):
            d = tmp_path / "derm" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    splits = Derm(real_dir="benign_real", fake_dir="synth").folders(tmp_path / "derm")
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 6, "test": 6}
    dm = make_dm(tmp_path / "derm", layout=Derm(real_dir="benign_real", fake_dir="synth"))
    assert dm.generator_names == ["derm"]
    with pytest.raises(DatasetLayoutError, match="set data.layout.real_dir / data.layout.fake_dir"):
        Derm().folders(tmp_path / "derm")


def test_unreadable_file_is_skipped_and_counted(genimage_tree):
    (genimage_tree / "gen_a" / "val" / "ai" / "broken.png").write_bytes(b"not a png")
    dm = make_dm(genimage_tree, batch_size=64)
    batch = next(iter(dm.test_dataloader()))
    assert int(batch["skipped"]) == 1
    assert batch["image"].shape[0] == len(dm.splits["test"]) - 1
