"""The CNNDetection / ForenSynths layout (Wang et al., 2020, "CNN-generated images are surprisingly easy to
spot... for now", CVPR): ``<root>/{train,val}/<class>/{0_real,1_fake}`` (all ProGAN) and
``<root>/test/<generator>/[<class>/]{0_real,1_fake}``; the three folders are the three splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from experiments.data.layouts.base import (
    DatasetLayoutError,
    Layout,
    Sample,
    ScanContext,
    check_known,
    few,
    labelled,
    require_dir,
    subfolders,
)
from experiments.data.layouts.splits import Selection
from experiments.data.layouts.tree import Node, class_nodes
from experiments.data.walk import ImageWalk


class CNNDetection(Layout):
    """``<root>/{train,val}/<class>/{0_real,1_fake}`` and ``<root>/test/<generator>/[<class>/]{0_real,1_fake}``.

    Every train/val sample's generator is ``train_generator`` (ProGAN in the paper); ``classes`` keeps only those
    object classes (e.g. the paper's 2-, 4- or 8-class settings ``[car, cat, chair, horse]``), in train and val
    only (None = all). In test the generator is the test folder's name and every object class is kept.
    """

    name = "cnndetection"
    data_config = "cnndetection"

    def __init__(self, train_generator: str = "progan", classes: Sequence[str] | None = None,
                 real_dir: str = "0_real", fake_dir: str = "1_fake") -> None:
        super().__init__(real_dir, fake_dir)
        self.train_generator = train_generator
        self.classes = list(classes) if classes else None

    def splits(self, root: Path, selection: Selection,
               walk: ImageWalk | None = None) -> tuple[list[Sample], list[Sample], list[Sample]]:
        """The three folders as they are; ``test_generators`` (or ``generators``) pick the test folders."""
        if selection.generators and self.train_generator not in selection.generators:
            raise DatasetLayoutError(
                f"data.generators={list(selection.generators)} leaves no train images: every train/val image of "
                f"layout=cnndetection is data.layout.train_generator='{self.train_generator}'. Set "
                f"data.generators=null and pick the test folders with data.test_generators."
            )
        folders = self.folders(root, selection.test_generators or selection.generators, walk=walk)
        return folders["train"], folders["val"], folders["test"]

    def folders(self, root: str | Path, test_generators: Sequence[str] | None = None,
                walk: ImageWalk | None = None) -> dict[str, list[Sample]]:
        """Scan the tree into ``{"train": [...], "val": [...], "test": [...]}``; ``test_generators`` keeps only
        those test folders (None = all)."""
        ctx = ScanContext(self, Path(root), walk)
        require_dir(ctx.root, "data.root", ctx)
        found = subfolders(ctx.root)
        missing = [s for s in ("train", "val", "test") if s not in found]
        if missing:
            raise ctx.error(f"data.root {ctx.root} has no {missing} folder(s) "
                            f"(found: {few(found) if found else 'no sub-folders'}).")
        out = {split: [s for cls in self._object_classes(ctx.root / split, ctx)
                       for s in labelled(ctx.root / split / cls, self.train_generator, ctx)]
               for split in ("train", "val")}
        test_dir = ctx.root / "test"
        available = subfolders(test_dir)
        if not available:
            raise ctx.error(f"{test_dir} has no generator folders.")
        chosen = check_known(test_generators, available, "data.test_generators", test_dir)
        out["test"] = [s for gen in chosen for s in self._test_generator_samples(test_dir / gen, ctx)]
        return out

    def _object_classes(self, split_dir: Path, ctx: ScanContext) -> list[str]:
        """The object-class folders of a train/val folder, checked against ``classes``."""
        found = subfolders(split_dir)
        if {self.real_dir, self.fake_dir} & set(found):
            raise ctx.error(f"{split_dir} holds {self.real_dir}/{self.fake_dir} directly (found: {few(found)}); the "
                            f"train and val folders need object-class folders first: <class>/{self.real_dir}.")
        if not found:
            raise ctx.error(f"{split_dir} has no object-class folders (it is empty or holds only files).")
        if self.classes:
            unknown = [c for c in self.classes if c not in found]
            if unknown:
                raise ctx.error(f"data.layout.classes lists {unknown}, not found in {split_dir} "
                                f"(found: {few(found)}).", "Set data.layout.classes=null to use every class.")
            return list(self.classes)
        return found

    def _test_generator_samples(self, gen_dir: Path, ctx: ScanContext) -> list[Sample]:
        """One test generator: ``0_real``/``1_fake`` directly, or inside object-class folders."""
        real, fake = self.real_dir, self.fake_dir
        found = subfolders(gen_dir)
        direct = {real, fake} & set(found)
        if direct and set(found) - {real, fake}:
            raise ctx.error(f"test generator folder {gen_dir} mixes class folders {sorted(direct)} with other "
                            f"folders (found: {few(found)}); it must hold either {real}/{fake} or "
                            f"<class>/{real}, <class>/{fake}.")
        if direct:
            return labelled(gen_dir, gen_dir.name, ctx)
        if not found:
            raise ctx.error(f"test generator folder {gen_dir} is empty (no {real}/{fake} and no "
                            f"object-class folders).")
        return [s for cls in found for s in labelled(gen_dir / cls, gen_dir.name, ctx)]

    def tree_nodes(self) -> list[Node]:
        real, fake = self.real_dir, self.fake_dir

        def per_class(note: str = "", notes: bool = False) -> Node:
            return Node("<class>/", note, class_nodes(real, fake, notes))

        return [
            Node("train/", "ProGAN training images (generator: data.layout.train_generator)",
                 (per_class("20 object classes: airplane, bicycle, ..., tvmonitor (data.layout.classes)", True),)),
            Node("val/", "", (per_class(),)),
            Node("test/", "", (
                Node("<generator>/", "with classes, e.g. progan, stylegan, stylegan2, cyclegan", (per_class(),)),
                Node("<generator>/", "without classes, e.g. biggan, gaugan, stargan, deepfake",
                     class_nodes(real, fake, notes=False)),
            )),
        ]
