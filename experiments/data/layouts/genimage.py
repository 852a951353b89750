"""The GenImage layouts (Zhu et al., 2023, "GenImage: A Million-Scale Benchmark for Detecting AI-Generated
Image", NeurIPS).

:class:`GenImageFlat` is the flat tree of Tiny GenImage and the demo data, ``<root>/<generator>/{train,val}/
{ai,nature}`` (``data=genimage_tiny``, ``data=demo``); :class:`GenImageNested` is the original download, one
folder deeper: ``<root>/<Generator>/<imagenet_...>/{train,val}/{ai,nature}`` (``data=genimage``). The GenImage
``val`` folder is the suite's *test* split; the suite's *val* split is a deterministic, seeded, stratified
hold-out of ``train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from experiments.data.layouts.base import (
    DatasetLayoutError,
    Layout,
    Sample,
    ScanContext,
    few,
    labelled,
    require_dir,
    subfolders,
)
from experiments.data.layouts.splits import Selection
from experiments.data.layouts.tree import Node, class_nodes
from experiments.data.walk import ImageWalk

GENERATOR_HINT = "Or list only complete generators in data.generators."


class GenImageFlat(Layout):
    """``<root>/<generator>/{train,val}/{ai,nature}``: Tiny GenImage and the demo data."""

    name = "genimage"
    data_config = "genimage_tiny"

    def __init__(self, real_dir: str = "nature", fake_dir: str = "ai") -> None:
        super().__init__(real_dir, fake_dir)

    def splits(self, root: Path, selection: Selection,
               walk: ImageWalk | None = None) -> tuple[list[Sample], list[Sample], list[Sample]]:
        """GenImage's train folder is train (and the val hold-out), its val folder the suite's test split."""
        folders = self.folders(root, selection.wanted, walk=walk)
        return selection.select({"train": folders["train"], "val": [], "test": folders["val"]})

    def folders(self, root: str | Path, generators: Sequence[str] | None = None,
                splits: Sequence[str] = ("train", "val"), walk: ImageWalk | None = None) -> dict[str, list[Sample]]:
        """Scan the tree into ``{"train": [...], "val": [...]}`` (the folder names, not the suite's splits)."""
        ctx = ScanContext(self, Path(root), walk)
        out: dict[str, list[Sample]] = {s: [] for s in splits}
        for gen in self._generators(ctx, generators):
            base = self.generator_base(ctx.root / gen, ctx)
            for split in splits:
                split_dir = base / split
                if not split_dir.is_dir():
                    raise ctx.error(
                        f"generator '{gen}' has no '{split}' folder: {split_dir} is missing "
                        f"(found: {few(subfolders(base))}).",
                        self.missing_split_hint(base),
                    )
                out[split] += labelled(split_dir, gen, ctx)
        return out

    def generator_base(self, gen_dir: Path, ctx: ScanContext) -> Path:
        """The folder of one generator that holds ``train/`` and ``val/``."""
        return gen_dir

    def missing_split_hint(self, gen_dir: Path) -> str:
        """A hint when a generator folder looks like the original download (one level deeper)."""
        found = subfolders(gen_dir)
        if len(found) == 1 and {"train", "val"} & set(subfolders(gen_dir / found[0])):
            return (f"{gen_dir}/{found[0]} holds train/val: this is the original GenImage download; "
                    f"use data=genimage (data.layout=genimage_full) for it.")
        return GENERATOR_HINT

    @staticmethod
    def _generators(ctx: ScanContext, generators: Sequence[str] | None) -> list[str]:
        require_dir(ctx.root, "data.root", ctx)
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
                raise DatasetLayoutError(f"data.generators lists {unknown}, not found under {ctx.root}; "
                                         f"available generators: {available}")
        return list(generators) if generators else available

    def split_nodes(self) -> tuple[Node, Node]:
        real, fake = self.real_dir, self.fake_dir
        return (Node("train/", "train split (the suite's val = a seeded hold-out of it)", class_nodes(real, fake)),
                Node("val/", "the suite's test split", class_nodes(real, fake, notes=False)))

    def tree_nodes(self) -> list[Node]:
        return [Node("<generator>/", "one per generator, e.g. midjourney, stable_diffusion_v_1_4",
                     self.split_nodes())]


class GenImageNested(GenImageFlat):
    """The original GenImage download, ``<root>/<Generator>/<imagenet_...>/{train,val}/{ai,nature}``.

    The generator name is the top folder (e.g. ``stable_diffusion_v_1_4``); each generator folder must hold
    exactly one sub-folder with ``train``/``val`` (e.g. ``imagenet_ai_0419_sdv4``); loose files (zip parts) are
    ignored.
    """

    name = "genimage_full"
    data_config = "genimage"

    def generator_base(self, gen_dir: Path, ctx: ScanContext) -> Path:
        """The one ``imagenet_*`` folder of a generator folder (the one holding train/val)."""
        inner = [name for name in subfolders(gen_dir) if {"train", "val"} & set(subfolders(gen_dir / name))]
        if len(inner) == 1:
            return gen_dir / inner[0]
        found = subfolders(gen_dir)
        if not inner and {"train", "val"} & set(found):
            raise ctx.error(f"generator folder {gen_dir} holds train/val directly (found: {few(found)}): this is "
                            f"the flat GenImage layout.", "Use data=genimage_tiny (data.layout=genimage) for it.")
        if not inner:
            raise ctx.error(f"generator folder {gen_dir} has no <imagenet_...> folder holding train/ and val/ "
                            f"(found: {few(found) if found else 'no sub-folders'}).")
        raise ctx.error(f"generator folder {gen_dir} has {len(inner)} folders holding train/val ({few(inner)}); "
                        f"exactly one is expected.", "Move or remove the extra folders.")

    def missing_split_hint(self, gen_dir: Path) -> str:
        return GENERATOR_HINT

    def tree_nodes(self) -> list[Node]:
        inner = Node("<imagenet_...>/", "exactly one, e.g. imagenet_ai_0419_sdv4, imagenet_midjourney",
                     self.split_nodes())
        return [Node("<Generator>/", "one per generator, e.g. ADM, BigGAN, Midjourney, stable_diffusion_v_1_4",
                     (inner,))]
