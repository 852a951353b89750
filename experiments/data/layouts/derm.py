"""Real vs synthetic dermatology images (SPECTRAFORGE): ``<root>/{train,val,test}/{real,synthetic}``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from experiments.data.layouts.base import Layout, Sample, ScanContext, labelled, require_dir
from experiments.data.layouts.splits import Selection
from experiments.data.layouts.tree import Node, class_nodes
from experiments.data.walk import ImageWalk


class Derm(Layout):
    """``<root>/{train,val,test}/{real,synthetic}``, with configurable class folder names; the three folders are
    the three splits and every sample gets the generator name ``generator_name``."""

    name = "derm"
    data_config = "derm"

    def __init__(self, real_dir: str = "real", fake_dir: str = "synthetic", generator_name: str = "derm") -> None:
        super().__init__(real_dir, fake_dir)
        self.generator_name = generator_name

    def splits(self, root: Path, selection: Selection,
               walk: ImageWalk | None = None) -> tuple[list[Sample], list[Sample], list[Sample]]:
        folders = self.folders(root, walk=walk)
        return folders["train"], folders["val"], folders["test"]

    def folders(self, root: str | Path, splits: Sequence[str] = ("train", "val", "test"),
                walk: ImageWalk | None = None) -> dict[str, list[Sample]]:
        ctx = ScanContext(self, Path(root), walk)
        require_dir(ctx.root, "data.root", ctx)
        out: dict[str, list[Sample]] = {}
        for split in splits:
            split_dir = ctx.root / split
            require_dir(split_dir, f"split folder '{split}'", ctx)
            out[split] = labelled(split_dir, self.generator_name, ctx)
        return out

    def tree_nodes(self) -> list[Node]:
        return [Node(f"{split}/", "", class_nodes(self.real_dir, self.fake_dir, notes=split == "train"))
                for split in ("train", "val", "test")]
