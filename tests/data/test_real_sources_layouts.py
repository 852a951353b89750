"""A real image's source: a manifest's optional ``source`` column, else the generator folder it was found in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from experiments.data.layouts import Derm, GenImageFlat, Manifest, Sample, real_source


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    return paths


def _manifest(root: Path, with_source: bool) -> Path:
    """Two real rows per split (one with source ``phone``, one with an empty source) and one fake row per split."""
    rows = ["path,label,generator,split" + (",source" if with_source else "")]
    for split in ("train", "test"):
        real, fake = _images(root / split / "real", 2), _images(root / split / "fake", 1)
        sources = ("phone", "")
        for p, source in zip(real, sources):
            rows.append(f"{p.relative_to(root)},real,sd,{split}" + (f",{source}" if with_source else ""))
        rows.append(f"{fake[0].relative_to(root)},fake,sd,{split}" + (",phone" if with_source else ""))
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_manifest_source_column_names_the_real_source(tmp_path):
    root = _manifest(tmp_path / "m", with_source=True)
    test = Manifest().folders(root)["test"]
    assert sorted((s.label, s.source, real_source(s)) for s in test) == [
        (0, "", "sd"), (0, "phone", "phone"), (1, "phone", "")]  # empty -> its generator; a fake has no source


def test_manifest_without_source_column_takes_the_generator(tmp_path):
    root = _manifest(tmp_path / "m", with_source=False)
    test = Manifest().folders(root)["test"]
    assert [s.source for s in test] == ["", "", ""]
    assert sorted(real_source(s) for s in test) == ["", "sd", "sd"]


def test_folder_layouts_take_the_generator_folder_as_source(genimage_tree):
    for samples in GenImageFlat().folders(genimage_tree).values():
        assert {(s.generator, real_source(s)) for s in samples if s.label == 0} == {("gen_a", "gen_a"),
                                                                                     ("gen_b", "gen_b")}
        assert {real_source(s) for s in samples if s.label == 1} == {""}


def test_derm_reals_have_its_one_source(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("real", "synthetic"):
            _images(tmp_path / split / cls, 1)
    test = Derm(generator_name="derm").folders(tmp_path)["test"]
    assert sorted(real_source(s) for s in test) == ["", "derm"]


def test_sample_source_defaults_to_empty():
    sample = Sample("/x.png", 0, "gen_a", "x.png")
    assert sample.source == "" and real_source(sample) == "gen_a"
    assert real_source(Sample("/x.png", 0, "gen_a", "x.png", "night_mode")) == "night_mode"
