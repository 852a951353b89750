"""The standard benchmark layouts: CNNDetection, the original GenImage download and CSV manifests.

Tiny trees of 8x8 images: sample counts, labels, generators and splits, and the layout errors, which show
what was found, the expected tree and the command that checks the data.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hydra.utils import get_class

from experiments.training.builders import build_datamodule
from experiments.data.datamodule import DetectorDataModule
from experiments.data.layout_trees import PRINTED, main as print_trees
from experiments.data.layouts import CNNDetection, DatasetLayoutError, GenImageFlat, GenImageNested, Layout, Manifest
from tests.conftest import compose_config

README = Path(__file__).resolve().parents[2] / "README.md"
RNG = np.random.default_rng(0)


def write_images(folder: Path, n: int, ext: str = "png") -> list[Path]:
    """``n`` random 8x8 RGB images in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:02d}.{ext}" for i in range(n)]
    for p in paths:
        Image.fromarray(RNG.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
    return paths


def make_dm(root: Path, layout: Layout, **kw) -> DetectorDataModule:
    args = dict(name="t", root=str(root), layout=layout, crop_size=8, resize_size=None, batch_size=2,
                num_workers=0, val_fraction=0.5)
    args.update(kw)
    dm = DetectorDataModule(**args)
    dm.setup()
    return dm


def counts(samples) -> Counter:
    """``(generator, label) -> count``."""
    return Counter((s.generator, s.label) for s in samples)


def layout_error(call, *args, **kw) -> str:
    with pytest.raises(DatasetLayoutError) as info:
        call(*args, **kw)
    return str(info.value)


# -- CNNDetection (Wang et al., 2020) -------------------------------------------------------------------------
@pytest.fixture
def cnn_tree(tmp_path: Path) -> Path:
    """train/val: car, cat (ProGAN); test: progan with classes car, cat; biggan without classes (JPEG)."""
    root = tmp_path / "cnndetection"
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("car", "cat"):
            for label in ("0_real", "1_fake"):
                write_images(root / split / cls / label, n)
    for cls in ("car", "cat"):
        for label in ("0_real", "1_fake"):
            write_images(root / "test" / "progan" / cls / label, 2)
    for label in ("0_real", "1_fake"):
        write_images(root / "test" / "biggan" / label, 3, ext="jpg")
    return root


def test_cnndetection_splits_labels_and_generators(cnn_tree):
    dm = make_dm(cnn_tree, CNNDetection(real_dir="0_real", fake_dir="1_fake"))
    assert counts(dm.splits["train"]) == {("progan", 0): 6, ("progan", 1): 6}
    assert counts(dm.splits["val"]) == {("progan", 0): 4, ("progan", 1): 4}
    assert counts(dm.splits["test"]) == {("progan", 0): 4, ("progan", 1): 4, ("biggan", 0): 3, ("biggan", 1): 3}
    for split, samples in dm.splits.items():
        for s in samples:
            assert s.label == (1 if "/1_fake/" in s.path else 0)
            assert Path(s.path).relative_to(cnn_tree).parts[0] == split
    assert dm.generator_names == ["biggan", "progan"]


def test_cnndetection_classes_train_generator_and_test_filter(cnn_tree):
    splits = CNNDetection(train_generator="pgan", classes=["cat"]).folders(cnn_tree, test_generators=["biggan"])
    assert counts(splits["train"]) == {("pgan", 0): 3, ("pgan", 1): 3}
    assert all("/cat/" in s.path for s in splits["train"] + splits["val"])
    assert counts(splits["test"]) == {("biggan", 0): 3, ("biggan", 1): 3}
    with pytest.raises(DatasetLayoutError, match=r"data.layout.classes lists \['dog'\].*found: \['car', 'cat'\]"):
        CNNDetection(classes=["dog"]).folders(cnn_tree)
    with pytest.raises(DatasetLayoutError, match=r"data.test_generators lists \['gaugan'\]"):
        CNNDetection().folders(cnn_tree, test_generators=["gaugan"])
    with pytest.raises(DatasetLayoutError, match="leaves no train images"):
        make_dm(cnn_tree, CNNDetection(real_dir="0_real", fake_dir="1_fake"), generators=["stylegan"])


def test_cnndetection_classes_rejected_elsewhere(tmp_path):
    """Object classes belong to the CNNDetection layout only: another layout does not take them."""
    with pytest.raises(TypeError, match="classes"):
        GenImageFlat(classes=["car"])
    cfg = compose_config(["data=genimage_tiny", f"data.root={tmp_path}", "+data.layout.classes=[car]"], tmp_path)
    with pytest.raises(TypeError, match="classes"):
        build_datamodule(cfg)


def test_cnndetection_without_class_level_shows_expected_tree(cnn_tree):
    shutil.rmtree(cnn_tree / "train")
    write_images(cnn_tree / "train" / "0_real", 1)
    write_images(cnn_tree / "train" / "1_fake", 1)
    message = layout_error(CNNDetection().folders, cnn_tree)
    assert "holds 0_real/1_fake directly (found: ['0_real', '1_fake'])" in message
    assert CNNDetection().expected_tree(str(cnn_tree)) in message
    assert f"python run.py task=check_data data=cnndetection data.root={cnn_tree}" in message


def test_cnndetection_missing_split_and_empty_class(cnn_tree):
    shutil.rmtree(cnn_tree / "test")
    message = layout_error(CNNDetection().folders, cnn_tree)
    assert "has no ['test'] folder(s) (found: ['train', 'val'])" in message
    assert "|-- train/" in message and "`-- test/" in message and "`-- 1_fake/" in message
    for f in (cnn_tree / "val" / "cat" / "1_fake").iterdir():
        f.unlink()
    (cnn_tree / "val" / "cat" / "1_fake" / "notes.txt").write_text("x")
    write_images(cnn_tree / "test" / "biggan" / "0_real", 1)
    assert "holds no images" in layout_error(CNNDetection().folders, cnn_tree)


def test_cnndetection_test_generator_mixing_levels(cnn_tree):
    write_images(cnn_tree / "test" / "progan" / "0_real", 1)
    assert "mixes class folders ['0_real']" in layout_error(CNNDetection().folders, cnn_tree)


# -- GenImage as downloaded (Zhu et al., 2023) -----------------------------------------------------------------
def make_genimage_full(root: Path) -> Path:
    for gen, inner in (("Midjourney", "imagenet_midjourney"), ("stable_diffusion_v_1_4", "imagenet_ai_0419_sdv4")):
        for split, n in (("train", 4), ("val", 2)):
            for cls in ("ai", "nature"):
                write_images(root / gen / inner / split / cls, n)
        (root / gen / f"{inner}.zip.001").write_bytes(b"zip part")  # leftovers of the download are ignored
    return root


def test_genimage_full_splits_and_generators(tmp_path):
    root = make_genimage_full(tmp_path / "GenImage")
    folders = GenImageNested().folders(root)
    assert counts(folders["train"]) == {(g, c): 4 for g in ("Midjourney", "stable_diffusion_v_1_4") for c in (0, 1)}
    dm = make_dm(root, GenImageNested(), generators=["Midjourney"], test_generators=["stable_diffusion_v_1_4"])
    assert counts(dm.splits["train"]) == {("Midjourney", 0): 2, ("Midjourney", 1): 2}
    assert counts(dm.splits["val"]) == {("Midjourney", 0): 2, ("Midjourney", 1): 2}
    assert counts(dm.splits["test"]) == {("stable_diffusion_v_1_4", 0): 2, ("stable_diffusion_v_1_4", 1): 2}
    assert all("/imagenet_ai_0419_sdv4/val/" in s.path for s in dm.splits["test"])
    assert all(s.label == (1 if "/ai/" in s.path else 0) for split in dm.splits.values() for s in split)


def test_genimage_depths_are_told_apart(tmp_path, genimage_tree):
    full = make_genimage_full(tmp_path / "GenImage")
    message = layout_error(GenImageFlat().folders, full)
    assert "this is the original GenImage download; use data=genimage (data.layout=genimage_full)" in message
    assert GenImageFlat().expected_tree(str(full)) in message
    message = layout_error(GenImageNested().folders, genimage_tree)
    assert "holds train/val directly" in message and "Use data=genimage_tiny (data.layout=genimage)" in message
    assert GenImageNested().expected_tree(str(genimage_tree)) in message
    assert f"python run.py task=check_data data=genimage data.root={genimage_tree}" in message


def test_genimage_full_two_inner_folders(tmp_path):
    root = make_genimage_full(tmp_path / "GenImage")
    shutil.copytree(root / "Midjourney" / "imagenet_midjourney", root / "Midjourney" / "imagenet_midjourney_v2")
    message = layout_error(GenImageNested().folders, root)
    assert "has 2 folders holding train/val (['imagenet_midjourney', 'imagenet_midjourney_v2'])" in message


# -- CSV manifest -----------------------------------------------------------------------------------------------
@pytest.fixture
def manifest_root(tmp_path: Path) -> Path:
    """8 train and 2 test rows per class, relative paths, one absolute one, both label vocabularies."""
    root = tmp_path / "listed"
    elsewhere = write_images(tmp_path / "elsewhere", 1, ext="jpg")[0]
    rows = ["path,label,generator,split"]
    for cls, label in (("real", "nature"), ("fake", "1")):
        for i, p in enumerate(write_images(root / cls, 10)):
            rows.append(f"{p.relative_to(root)},{label},sd,{'train' if i < 8 else 'test'}")
    rows.append(f"{elsewhere},FAKE,midjourney,test")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_manifest_relative_absolute_and_holdout(manifest_root, tmp_path):
    dm = make_dm(manifest_root, Manifest())
    assert counts(dm.splits["train"]) == {("sd", 0): 4, ("sd", 1): 4}
    assert counts(dm.splits["val"]) == {("sd", 0): 4, ("sd", 1): 4}
    assert counts(dm.splits["test"]) == {("sd", 0): 2, ("sd", 1): 2, ("midjourney", 1): 1}
    assert str(tmp_path / "elsewhere" / "00.jpg") in {s.path for s in dm.splits["test"]}
    assert all(Path(s.path).is_file() and s.label == (s.path.split("/")[-2] != "real")
               for split in dm.splits.values() for s in split)


def test_manifest_val_rows_and_other_csv(manifest_root, tmp_path):
    text = (manifest_root / "manifest.csv").read_text().replace("real/00.png,nature,sd,train",
                                                                  "real/00.png,0,sd,val")
    text = text.replace("fake/00.png,1,sd,train", "fake/00.png,ai,sd,VAL")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "mine.csv").write_text(text.replace("real/", "../listed/real/").replace("fake/", "../listed/fake/"))
    dm = make_dm(manifest_root, Manifest(manifest=str(lists / "mine.csv")), test_generators=["sd"])
    assert counts(dm.splits["val"]) == {("sd", 0): 1, ("sd", 1): 1}
    assert counts(dm.splits["train"]) == {("sd", 0): 7, ("sd", 1): 7}
    assert counts(dm.splits["test"]) == {("sd", 0): 2, ("sd", 1): 2}


def test_manifest_bad_label_names_csv_line_and_value(manifest_root):
    csv = manifest_root / "manifest.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].replace(",nature,", ",maybe,")
    lines[5] = lines[5].replace(",train", ",holdout")
    csv.write_text("\n".join(lines) + "\n")
    message = layout_error(Manifest(csv).folders, manifest_root)
    assert f"manifest {csv} has 2 bad row(s)" in message
    assert f"{csv} line 3: label 'maybe' is not one of ['0', 'real', 'nature', '1', 'fake', 'ai']" in message
    assert f"{csv} line 6: split 'holdout' is not one of ['train', 'val', 'test']" in message
    assert "path,label,generator,split" in message and "`-- <any folders>/" in message


def test_manifest_missing_file_and_duplicate_name_the_path(manifest_root):
    csv = manifest_root / "manifest.csv"
    (manifest_root / "real" / "03.png").unlink()
    with open(csv, "a") as f:
        f.write("fake/01.png,1,sd,test\n")
    message = layout_error(Manifest(csv).folders, manifest_root)
    assert f"line 5: file 'real/03.png' does not exist (looked for {manifest_root / 'real' / '03.png'})" in message
    assert "line 23: file 'fake/01.png' is already listed on line 13" in message


def test_manifest_header_missing_csv_and_unknown_generator(manifest_root):
    csv = manifest_root / "manifest.csv"
    message = layout_error(Manifest(manifest_root / "other.csv").folders, manifest_root)
    assert f"manifest {manifest_root / 'other.csv'} does not exist (found in {manifest_root}: " in message
    assert f"data.root={manifest_root} data.layout.manifest={manifest_root / 'other.csv'}" in message
    with pytest.raises(DatasetLayoutError, match=r"available: \['midjourney', 'sd'\]"):
        Manifest(csv).folders(manifest_root, generators=["dalle"])
    csv.write_text(csv.read_text().replace("path,label,generator,split", "file,label,generator,split", 1))
    message = layout_error(Manifest(csv).folders, manifest_root)
    assert "line 1: the header ['file', 'label', 'generator', 'split'] lacks the column(s) ['path']" in message


# -- configs, the README and the tree printer ----------------------------------------------------------------
@pytest.mark.parametrize(("data", "layout"), [("cnndetection", CNNDetection), ("genimage", GenImageNested),
                                              ("manifest", Manifest)])
def test_data_configs(data, layout, tmp_path, cnn_tree, manifest_root):
    roots = {"cnndetection": cnn_tree, "genimage": make_genimage_full(tmp_path / "GenImage"),
             "manifest": manifest_root}
    cfg = compose_config([f"data={data}", f"data.root={roots[data]}", "data.crop_size=8",
                          "data.resize_size=null", "data.num_workers=0"], tmp_path)
    assert get_class(cfg.data.layout._target_) is layout
    dm = build_datamodule(cfg)
    assert type(dm.layout) is layout
    dm.setup()
    assert all(dm.splits[s] for s in ("train", "val", "test"))


def test_every_layout_has_a_tree_in_the_readme(tmp_path):
    configs = sorted(p.stem for p in (README.parent / "conf" / "data").glob("[!_]*.yaml"))
    composed = [compose_config([f"data={name}"], tmp_path).data for name in configs]
    used = {get_class(data.layout._target_) for data in composed if "layout" in data}  # data=packed reads a pack
    assert [name for name, data in zip(configs, composed) if "layout" not in data] == ["packed"]
    assert used == {type(layout) for layout in PRINTED}, "layout_trees prints exactly the layouts the configs use"
    readme = README.read_text()
    for layout in PRINTED:
        assert layout.expected_tree() in readme, \
            f"README lacks `python -m experiments.data.layout_trees {layout.name}`"


def test_tree_printer(capsys):
    assert print_trees(["cnndetection"]) == 0
    assert capsys.readouterr().out.strip() == "layout=cnndetection\n" + CNNDetection().expected_tree()
    assert print_trees(["nope"]) == 2
