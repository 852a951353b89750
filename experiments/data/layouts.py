"""Folder layouts of the supported datasets, scanned into labelled samples.

* GenImage (Zhu et al., 2023, "GenImage: A Million-Scale Benchmark for Detecting
  AI-Generated Image"), and its "tiny" subsets: ``<root>/<generator>/{train,val}/{ai,nature}``.
  The GenImage ``val`` folder is the suite's *test* split; the suite's *val*
  split is a deterministic, seeded, stratified hold-out of ``train``.
* Dermatology: ``<root>/{train,val,test}/{real,synthetic}`` with configurable class folder names.

Labels: real/nature = 0, synthetic/ai = 1.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from experiments.data.images import IMAGE_EXTENSIONS, is_image_file

REAL, FAKE = 0, 1


class DatasetLayoutError(ValueError):
    """The dataset folder does not have the documented layout."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    generator: str


GENIMAGE_TREE = """{root}/
  <generator>/            e.g. stable_diffusion_v_1_4, midjourney, ...
    train/
      {fake}/                synthetic images (label 1)
      {real}/                real images (label 0)
    val/
      {fake}/
      {real}/"""

DERM_TREE = """{root}/
  train/
    {real}/                  real images (label 0)
    {fake}/                  synthetic images (label 1)
  val/
    {real}/  {fake}/
  test/
    {real}/  {fake}/"""


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def _require_dir(path: Path, what: str, tree: str) -> None:
    if not path.exists():
        raise DatasetLayoutError(f"{what} {path} does not exist.\nExpected layout:\n{tree}")
    if not path.is_dir():
        raise DatasetLayoutError(f"{what} {path} is not a directory.\nExpected layout:\n{tree}")


def _class_images(split_dir: Path, class_name: str, tree: str) -> list[Path]:
    folder = split_dir / class_name
    if not folder.is_dir():
        found = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
        raise DatasetLayoutError(
            f"class folder {folder} is missing (found: {found or 'no sub-folders'}).\n"
            f"Expected layout:\n{tree}\n"
            f"If your class folders have other names, set data.real_dir / data.fake_dir."
        )
    images = _list_images(folder)
    if not images:
        stray = [p.name for p in folder.iterdir()][:5]
        raise DatasetLayoutError(
            f"class folder {folder} holds no images with extensions {IMAGE_EXTENSIONS}"
            + (f" (found e.g. {stray})" if stray else " (it is empty)")
            + f".\nExpected layout:\n{tree}"
        )
    return images


def scan_genimage(
    root: str | Path,
    generators: Sequence[str] | None = None,
    real_dir: str = "nature",
    fake_dir: str = "ai",
    splits: Sequence[str] = ("train", "val"),
) -> dict[str, list[Sample]]:
    """Scan a GenImage tree into ``{"train": [...], "val": [...]}`` (the folder names, not the suite's splits)."""
    root = Path(root)
    tree = GENIMAGE_TREE.format(root=root, real=real_dir, fake=fake_dir)
    _require_dir(root, "data.root", tree)
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not available:
        loose = [p.name for p in root.iterdir() if p.is_file()][:5]
        raise DatasetLayoutError(
            f"data.root {root} has no generator folders"
            + (f" (it holds files such as {loose}: are the images at the wrong depth?)" if loose else "")
            + f".\nExpected layout:\n{tree}"
        )
    if generators:
        unknown = [g for g in generators if g not in available]
        if unknown:
            raise DatasetLayoutError(
                f"data.generators lists {unknown}, not found under {root}; available generators: {available}"
            )
        chosen = list(generators)
    else:
        chosen = available
    out: dict[str, list[Sample]] = {s: [] for s in splits}
    for gen in chosen:
        for split in splits:
            split_dir = root / gen / split
            if not split_dir.is_dir():
                have = sorted(p.name for p in (root / gen).iterdir() if p.is_dir())
                raise DatasetLayoutError(
                    f"generator '{gen}' has no '{split}' folder: {split_dir} is missing (found: {have}).\n"
                    f"Expected layout:\n{tree}\nOr list only complete generators in data.generators."
                )
            for label, cls in ((REAL, real_dir), (FAKE, fake_dir)):
                out[split] += [Sample(str(p), label, gen) for p in _class_images(split_dir, cls, tree)]
    return out


def scan_derm(
    root: str | Path,
    real_dir: str = "real",
    fake_dir: str = "synthetic",
    splits: Sequence[str] = ("train", "val", "test"),
    generator_name: str = "derm",
) -> dict[str, list[Sample]]:
    """Scan ``<root>/{train,val,test}/{real,synthetic}``; every sample gets the generator name ``generator_name``."""
    root = Path(root)
    tree = DERM_TREE.format(root=root, real=real_dir, fake=fake_dir)
    _require_dir(root, "data.root", tree)
    out: dict[str, list[Sample]] = {}
    for split in splits:
        split_dir = root / split
        _require_dir(split_dir, f"split folder '{split}'", tree)
        out[split] = [
            Sample(str(p), label, generator_name)
            for label, cls in ((REAL, real_dir), (FAKE, fake_dir))
            for p in _class_images(split_dir, cls, tree)
        ]
    return out


def _stable_key(seed: int, path: str) -> str:
    return hashlib.sha1(f"{seed}:{Path(path).as_posix()}".encode()).hexdigest()


def holdout_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Deterministic stratified hold-out: per (generator, label), the ``fraction`` of files with the smallest
    seeded hash go to the second list. Independent of file order and of the other strata."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {fraction}")
    strata: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        strata[(s.generator, s.label)].append(s)
    keep, held = [], []
    for key in sorted(strata):
        group = sorted(strata[key], key=lambda s: _stable_key(seed, s.path))
        n_held = max(1, round(len(group) * fraction)) if len(group) > 1 else 0
        held += group[:n_held]
        keep += group[n_held:]
    return sorted(keep, key=lambda s: s.path), sorted(held, key=lambda s: s.path)


def limit_per_class(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """Keep at most ``limit`` samples per (generator, label), chosen deterministically."""
    if not limit:
        return samples
    strata: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        strata[(s.generator, s.label)].append(s)
    out = []
    for key in sorted(strata):
        out += sorted(strata[key], key=lambda s: _stable_key(seed, s.path))[:limit]
    return sorted(out, key=lambda s: s.path)
