"""Folder layouts of the supported datasets, scanned into labelled samples.

* GenImage (Zhu et al., 2023, "GenImage: A Million-Scale Benchmark for Detecting AI-Generated Image",
  NeurIPS). ``layout="genimage"`` is the flat tree of Tiny GenImage and the demo data,
  ``<root>/<generator>/{train,val}/{ai,nature}``; ``layout="genimage_full"`` is the original download,
  one folder deeper: ``<root>/<Generator>/<imagenet_...>/{train,val}/{ai,nature}``. The GenImage ``val``
  folder is the suite's *test* split; the suite's *val* split is a deterministic, seeded, stratified
  hold-out of ``train``.
* CNNDetection / ForenSynths (Wang et al., 2020, "CNN-generated images are surprisingly easy to spot...
  for now", CVPR): ``<root>/{train,val}/<class>/{0_real,1_fake}`` (all ProGAN) and
  ``<root>/test/<generator>/[<class>/]{0_real,1_fake}``; the three folders are the three splits.
* Dermatology: ``<root>/{train,val,test}/{real,synthetic}`` with configurable class folder names.
* A CSV manifest of any files: ``experiments.data.manifest``.

Every scanner checks the tree and raises :class:`DatasetLayoutError` with what it found, the expected
tree (``experiments.data.layout_trees``) and the command that checks the data.

Labels: real/nature = 0, synthetic/ai = 1.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from experiments.errors import UserError
from experiments.data.images import IMAGE_EXTENSIONS, is_image_file
from experiments.data.layout_trees import expected_tree

REAL, FAKE = 0, 1
#: the data config of each layout, for the command printed with a layout error.
LAYOUT_CONFIGS = {"genimage": "genimage_tiny", "genimage_full": "genimage", "cnndetection": "cnndetection",
                  "derm": "derm", "manifest": "manifest"}
#: how many found entries an error message shows.
FOUND_LIMIT = 8


class DatasetLayoutError(ValueError, UserError):
    """The dataset folder does not have the documented layout."""


#: Names of the two labels, everywhere in code and reports: real = 0, synthetic = 1. A dataset's own folder
#: names (nature/ai, 0_real/1_fake, real/synthetic) stay at the layout boundary (``real_dir`` / ``fake_dir``).
CLASS_NAMES: tuple[str, str] = ("real", "synthetic")


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    generator: str


def few(names: Iterable[object], limit: int = FOUND_LIMIT) -> str:
    """``names`` as a list literal, cut after ``limit`` entries with the number left out."""
    names = [str(n) for n in names]
    if len(names) <= limit:
        return repr(names)
    return repr(names[:limit])[:-1] + f", ... (+{len(names) - limit} more)]"


def subfolders(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder`` (none when it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class LayoutContext:
    """What a scanner checks against: the layout, its root and class folder names; builds the errors."""

    layout: str
    root: Path
    real_dir: str = ""
    fake_dir: str = ""
    manifest: str = "manifest.csv"

    def tree(self) -> str:
        return expected_tree(self.layout, str(self.root), self.real_dir or None, self.fake_dir or None,
                             self.manifest)

    def error(self, problem: str, hint: str = "") -> DatasetLayoutError:
        """``problem`` (what was found), the expected tree, an optional hint and the command to re-check."""
        command = f"python run.py task=check_data data={LAYOUT_CONFIGS[self.layout]} data.root={self.root}"
        if self.layout == "manifest" and self.manifest != "manifest.csv":
            command += f" data.manifest={self.root / self.manifest}"
        return DatasetLayoutError(
            f"{problem}\nExpected layout (data.layout={self.layout}):\n{self.tree()}\n"
            + (f"{hint}\n" if hint else "")
            + f"Once fixed, check the data with: {command}"
        )


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def _require_dir(path: Path, what: str, ctx: LayoutContext) -> None:
    if not path.exists():
        parent = subfolders(path.parent)
        raise ctx.error(f"{what} {path} does not exist"
                        + (f" (found in {path.parent}: {few(parent)})." if parent else "."))
    if not path.is_dir():
        raise ctx.error(f"{what} {path} is not a directory.")


def _class_images(split_dir: Path, class_name: str, ctx: LayoutContext) -> list[Path]:
    folder = split_dir / class_name
    if not folder.is_dir():
        found = subfolders(split_dir)
        raise ctx.error(
            f"class folder {folder} is missing (found: {few(found) if found else 'no sub-folders'}).",
            "If your class folders have other names, set data.real_dir / data.fake_dir.",
        )
    images = _list_images(folder)
    if not images:
        stray = sorted(p.name for p in folder.iterdir())
        raise ctx.error(
            f"class folder {folder} holds no images with extensions {IMAGE_EXTENSIONS}"
            + (f" (found e.g. {few(stray, 5)})." if stray else " (it is empty).")
        )
    return images


def _labelled(folder: Path, generator: str, ctx: LayoutContext) -> list[Sample]:
    """The samples of ``folder/<real_dir>`` (label 0) and ``folder/<fake_dir>`` (label 1)."""
    return [Sample(str(p), label, generator)
            for label, cls in ((REAL, ctx.real_dir), (FAKE, ctx.fake_dir))
            for p in _class_images(folder, cls, ctx)]


def check_known(requested: Sequence[str] | None, available: Sequence[str], key: str, where: object) -> list[str]:
    """``requested`` if every name is in ``available`` (all of ``available`` when None), else an error."""
    if not requested:
        return list(available)
    unknown = [g for g in requested if g not in available]
    if unknown:
        raise DatasetLayoutError(f"{key} lists {unknown}, not found under {where}; available: {list(available)}")
    return list(requested)


# -- GenImage ---------------------------------------------------------------------------------------------
def _genimage_generators(ctx: LayoutContext, generators: Sequence[str] | None) -> list[str]:
    _require_dir(ctx.root, "data.root", ctx)
    available = subfolders(ctx.root)
    if not available:
        loose = sorted(p.name for p in ctx.root.iterdir() if p.is_file())
        raise ctx.error(
            f"data.root {ctx.root} has no generator folders"
            + (f" (it holds files such as {few(loose, 5)}: are the images at the wrong depth?)" if loose else "")
            + "."
        )
    if {"train", "val"} & set(available):
        raise ctx.error(f"data.root {ctx.root} holds split folders (found: {few(available)}), not generator "
                        f"folders.", "Point data.root at the folder above this one.")
    if generators:
        unknown = [g for g in generators if g not in available]
        if unknown:
            raise DatasetLayoutError(
                f"data.generators lists {unknown}, not found under {ctx.root}; available generators: {available}"
            )
    return list(generators) if generators else available


def _inner_imagenet_dir(gen_dir: Path, ctx: LayoutContext) -> Path:
    """The one ``imagenet_*`` folder of an original GenImage generator folder (the one holding train/val)."""
    inner = [name for name in subfolders(gen_dir) if {"train", "val"} & set(subfolders(gen_dir / name))]
    if len(inner) == 1:
        return gen_dir / inner[0]
    found = subfolders(gen_dir)
    if not inner and {"train", "val"} & set(found):
        raise ctx.error(f"generator folder {gen_dir} holds train/val directly (found: {few(found)}): this is the "
                        f"flat GenImage layout.", "Use data=genimage_tiny (data.layout=genimage) for it.")
    if not inner:
        raise ctx.error(f"generator folder {gen_dir} has no <imagenet_...> folder holding train/ and val/ "
                        f"(found: {few(found) if found else 'no sub-folders'}).")
    raise ctx.error(f"generator folder {gen_dir} has {len(inner)} folders holding train/val ({few(inner)}); "
                    f"exactly one is expected.", "Move or remove the extra folders.")


def _flat_layout_hint(gen_dir: Path) -> str:
    """A hint when a flat-layout generator folder looks like the original download (one level deeper)."""
    found = subfolders(gen_dir)
    if len(found) == 1 and {"train", "val"} & set(subfolders(gen_dir / found[0])):
        return (f"{gen_dir}/{found[0]} holds train/val: this is the original GenImage download; "
                f"use data=genimage (data.layout=genimage_full) for it.")
    return "Or list only complete generators in data.generators."


def _scan_genimage_tree(
    ctx: LayoutContext, generators: Sequence[str] | None, splits: Sequence[str], nested: bool
) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {s: [] for s in splits}
    for gen in _genimage_generators(ctx, generators):
        base = _inner_imagenet_dir(ctx.root / gen, ctx) if nested else ctx.root / gen
        for split in splits:
            split_dir = base / split
            if not split_dir.is_dir():
                hint = "Or list only complete generators in data.generators."
                raise ctx.error(
                    f"generator '{gen}' has no '{split}' folder: {split_dir} is missing "
                    f"(found: {few(subfolders(base))}).",
                    hint if nested else _flat_layout_hint(base),
                )
            out[split] += _labelled(split_dir, gen, ctx)
    return out


def scan_genimage(
    root: str | Path,
    generators: Sequence[str] | None = None,
    real_dir: str = "nature",
    fake_dir: str = "ai",
    splits: Sequence[str] = ("train", "val"),
) -> dict[str, list[Sample]]:
    """Scan a flat GenImage tree, ``<root>/<generator>/{train,val}/{ai,nature}`` (Tiny GenImage, the demo data),
    into ``{"train": [...], "val": [...]}`` (the folder names, not the suite's splits)."""
    ctx = LayoutContext("genimage", Path(root), real_dir, fake_dir)
    return _scan_genimage_tree(ctx, generators, splits, nested=False)


def scan_genimage_full(
    root: str | Path,
    generators: Sequence[str] | None = None,
    real_dir: str = "nature",
    fake_dir: str = "ai",
    splits: Sequence[str] = ("train", "val"),
) -> dict[str, list[Sample]]:
    """Scan the original GenImage download (Zhu et al., 2023, NeurIPS),
    ``<root>/<Generator>/<imagenet_...>/{train,val}/{ai,nature}``, into ``{"train": [...], "val": [...]}``.

    The generator name is the top folder (e.g. ``stable_diffusion_v_1_4``); each generator folder must hold
    exactly one sub-folder with ``train``/``val`` (e.g. ``imagenet_ai_0419_sdv4``); loose files (zip parts) are
    ignored.
    """
    ctx = LayoutContext("genimage_full", Path(root), real_dir, fake_dir)
    return _scan_genimage_tree(ctx, generators, splits, nested=True)


# -- CNNDetection -----------------------------------------------------------------------------------------
def _object_classes(split_dir: Path, classes: Sequence[str] | None, ctx: LayoutContext) -> list[str]:
    """The object-class folders of a CNNDetection train/val folder, checked against ``classes``."""
    found = subfolders(split_dir)
    if {ctx.real_dir, ctx.fake_dir} & set(found):
        raise ctx.error(f"{split_dir} holds {ctx.real_dir}/{ctx.fake_dir} directly (found: {few(found)}); the "
                        f"train and val folders need object-class folders first: <class>/{ctx.real_dir}.")
    if not found:
        raise ctx.error(f"{split_dir} has no object-class folders (it is empty or holds only files).")
    if classes:
        unknown = [c for c in classes if c not in found]
        if unknown:
            raise ctx.error(f"data.classes lists {unknown}, not found in {split_dir} (found: {few(found)}).",
                            "Set data.classes=null to use every class.")
        return list(classes)
    return found


def _test_generator_samples(gen_dir: Path, ctx: LayoutContext) -> list[Sample]:
    """One CNNDetection test generator: ``0_real``/``1_fake`` directly, or inside object-class folders."""
    found = subfolders(gen_dir)
    direct = {ctx.real_dir, ctx.fake_dir} & set(found)
    if direct and set(found) - {ctx.real_dir, ctx.fake_dir}:
        raise ctx.error(f"test generator folder {gen_dir} mixes class folders {sorted(direct)} with other folders "
                        f"(found: {few(found)}); it must hold either {ctx.real_dir}/{ctx.fake_dir} or "
                        f"<class>/{ctx.real_dir}, <class>/{ctx.fake_dir}.")
    if direct:
        return _labelled(gen_dir, gen_dir.name, ctx)
    if not found:
        raise ctx.error(f"test generator folder {gen_dir} is empty (no {ctx.real_dir}/{ctx.fake_dir} and no "
                        f"object-class folders).")
    return [s for cls in found for s in _labelled(gen_dir / cls, gen_dir.name, ctx)]


def scan_cnndetection(
    root: str | Path,
    train_generator: str = "progan",
    classes: Sequence[str] | None = None,
    test_generators: Sequence[str] | None = None,
    real_dir: str = "0_real",
    fake_dir: str = "1_fake",
) -> dict[str, list[Sample]]:
    """Scan a CNNDetection / ForenSynths tree (Wang et al., 2020, "CNN-generated images are surprisingly easy to
    spot... for now", CVPR) into ``{"train": [...], "val": [...], "test": [...]}``.

    ``<root>/{train,val}/<class>/{0_real,1_fake}``: every sample's generator is ``train_generator`` (ProGAN in the
    paper); ``classes`` keeps only those object classes (e.g. the paper's 2-, 4- or 8-class settings), in train and
    val only. ``<root>/test/<generator>/[<class>/]{0_real,1_fake}``: the generator is the test folder's name, all
    object classes are kept; ``test_generators`` keeps only those folders (None = all).
    """
    ctx = LayoutContext("cnndetection", Path(root), real_dir, fake_dir)
    _require_dir(ctx.root, "data.root", ctx)
    found = subfolders(ctx.root)
    missing = [s for s in ("train", "val", "test") if s not in found]
    if missing:
        raise ctx.error(f"data.root {ctx.root} has no {missing} folder(s) "
                        f"(found: {few(found) if found else 'no sub-folders'}).")
    out = {split: [s for cls in _object_classes(ctx.root / split, classes, ctx)
                   for s in _labelled(ctx.root / split / cls, train_generator, ctx)]
           for split in ("train", "val")}
    test_dir = ctx.root / "test"
    available = subfolders(test_dir)
    if not available:
        raise ctx.error(f"{test_dir} has no generator folders.")
    chosen = check_known(test_generators, available, "data.test_generators", test_dir)
    out["test"] = [s for gen in chosen for s in _test_generator_samples(test_dir / gen, ctx)]
    return out


# -- dermatology ------------------------------------------------------------------------------------------
def scan_derm(
    root: str | Path,
    real_dir: str = "real",
    fake_dir: str = "synthetic",
    splits: Sequence[str] = ("train", "val", "test"),
    generator_name: str = "derm",
) -> dict[str, list[Sample]]:
    """Scan ``<root>/{train,val,test}/{real,synthetic}``; every sample gets the generator name ``generator_name``."""
    ctx = LayoutContext("derm", Path(root), real_dir, fake_dir)
    _require_dir(ctx.root, "data.root", ctx)
    out: dict[str, list[Sample]] = {}
    for split in splits:
        split_dir = ctx.root / split
        _require_dir(split_dir, f"split folder '{split}'", ctx)
        out[split] = _labelled(split_dir, generator_name, ctx)
    return out


def _seeded_order(seed: int, root: str | Path | None):
    """The sort key of :func:`holdout_split` and :func:`limit_per_class`: the seeded hash of a sample's path relative
    to ``root`` (the dataset root), so the split is the same wherever the dataset or the clone lives; a file outside
    ``root`` (a manifest may name any path) is hashed by its own path."""
    base = Path(os.path.abspath(root)) if root is not None else None

    def key(sample: Sample) -> str:
        name = Path(os.path.abspath(sample.path))
        if base is not None and name.is_relative_to(base):
            name = name.relative_to(base)
        return hashlib.sha1(f"{seed}:{name.as_posix()}".encode()).hexdigest()

    return key


def _strata(samples: list[Sample]) -> dict[tuple[str, int], list[Sample]]:
    """``samples`` grouped by (generator, label), the strata of every seeded choice."""
    strata: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        strata[(s.generator, s.label)].append(s)
    return strata


def holdout_split(samples: list[Sample], fraction: float, seed: int,
                  root: str | Path | None) -> tuple[list[Sample], list[Sample]]:
    """Deterministic stratified hold-out: per (generator, label), the ``fraction`` of files with the smallest
    seeded hash of their path relative to ``root`` go to the second list. Independent of file order, of the
    other strata and of where the dataset lives (``root=None`` hashes the absolute paths: location-dependent)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {fraction}")
    strata, order = _strata(samples), _seeded_order(seed, root)
    keep, held = [], []
    for key in sorted(strata):
        group = sorted(strata[key], key=order)
        n_held = max(1, round(len(group) * fraction)) if len(group) > 1 else 0
        held += group[:n_held]
        keep += group[n_held:]
    return sorted(keep, key=lambda s: s.path), sorted(held, key=lambda s: s.path)


def limit_per_class(samples: list[Sample], limit: int | None, seed: int,
                    root: str | Path | None) -> list[Sample]:
    """Keep at most ``limit`` samples per (generator, label), chosen by the seeded hash of their path relative to
    ``root`` (the same choice wherever the dataset lives)."""
    if not limit:
        return samples
    strata, order = _strata(samples), _seeded_order(seed, root)
    out = []
    for key in sorted(strata):
        out += sorted(strata[key], key=order)[:limit]
    return sorted(out, key=lambda s: s.path)
