"""The manifest layout: any image files, listed in a CSV.

The CSV has the header ``path,label,generator,split``, optionally ``source`` (more columns are allowed and ignored):

* ``path``: relative to the CSV's folder, or absolute;
* ``label``: ``0``, ``real`` or ``nature`` for real images; ``1``, ``fake`` or ``ai`` for synthetic ones
  (case-insensitive);
* ``generator``: any non-empty name (real images take the name of the generator they are paired with,
  as GenImage's ``nature`` folders do, or a name of their own);
* ``split``: ``train``, ``val`` or ``test`` (case-insensitive). Without ``val`` rows, the datamodule holds
  out a seeded, stratified part of ``train`` as val, as for GenImage.
* ``source`` (optional): where a real image comes from (a camera, a phone's night mode, a photo collection);
  the per-source false-positive rates are reported by it. Without the column, or where it is empty, a real
  image's source is its generator (:func:`~experiments.data.layouts.base.real_source`).
* ``date`` (optional): when the generator of a synthetic image was released (``YYYY-MM-DD``, ``YYYY-MM`` or
  ``YYYY``); ``experiment=chronological`` without ``data.generator_order`` orders the generators by their
  earliest dated synthetic image (:func:`~experiments.data.chronology.order_from_dates`).

Every row is checked (known label and split, non-empty generator, the file exists, no path listed twice)
and the errors name the CSV, the line number and the bad value.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Sequence

from experiments.data.chronology import order_from_dates
from experiments.data.layouts.base import Layout, Sample, ScanContext, check_known, few, relative_name
from experiments.data.layouts.splits import Selection
from experiments.data.layouts.tree import Node, render_tree
from experiments.data.walk import ImageWalk

SPLITS = ("train", "val", "test")
#: how many bad rows an error message lists.
BAD_ROWS_SHOWN = 5
#: the header of a manifest CSV.
MANIFEST_COLUMNS = ("path", "label", "generator", "split")
#: accepted manifest labels (case-insensitive) and their class.
MANIFEST_LABELS = {"0": 0, "real": 0, "nature": 0, "1": 1, "fake": 1, "ai": 1}
DEFAULT_CSV = "manifest.csv"

MANIFEST_EXAMPLE = """\
{name}:
  path,label,generator,split
  real/0001.png,real,sdv14,train
  sdv14/0001.png,fake,sdv14,train
  /data/extra/0002.jpg,1,sdv14,test
  label: 0, real or nature = real; 1, fake or ai = synthetic (case-insensitive)
  split: train, val or test; without val rows, val is a seeded hold-out of train (data.val_fraction)"""


class Manifest(Layout):
    """Any files listed in the CSV ``manifest`` (None = ``<root>/manifest.csv``); its split column is the split,
    with the seeded hold-out of train as val when it has no val rows."""

    name = "manifest"
    data_config = "manifest"

    def __init__(self, manifest: str | Path | None = None) -> None:
        super().__init__()
        self.manifest = Path(manifest) if manifest else None

    def __repr__(self) -> str:
        return f"Manifest(manifest={self.manifest!r})"

    @property
    def class_names(self) -> tuple[str, str]:
        return "label 0", "label 1"

    def csv_path(self, root: str | Path) -> Path:
        return self.manifest if self.manifest is not None else Path(root) / DEFAULT_CSV

    def shown_name(self, root: str | Path) -> str:
        """The CSV as the messages name it: relative to ``root``, or its full path."""
        csv_path = self.csv_path(root)
        try:
            return str(csv_path.relative_to(root))
        except ValueError:
            return str(csv_path)

    def splits(self, root: Path, selection: Selection,
               walk: ImageWalk | None = None) -> tuple[list[Sample], list[Sample], list[Sample]]:
        return selection.select(self.folders(root, selection.wanted, walk=walk))

    def folders(self, root: str | Path, generators: Sequence[str] | None = None,
                walk: ImageWalk | None = None) -> dict[str, list[Sample]]:
        """Read the CSV into ``{"train": [...], "val": [...], "test": [...]}`` (``val`` may be empty); keep only
        ``generators`` (None = all; an unknown name is an error)."""
        ctx = ScanContext(self, Path(root), walk)
        csv_path = self.csv_path(root)
        if not csv_path.is_file():
            near = sorted(p.name for p in csv_path.parent.iterdir()) if csv_path.parent.is_dir() else []
            raise ctx.error(f"manifest {csv_path} does not exist"
                            + (f" (found in {csv_path.parent}: {few(near)})." if near else "."),
                            "Set data.layout.manifest=/path/to/your.csv, or write <root>/manifest.csv.")
        out = _read_manifest(csv_path, ctx)
        empty = [s for s in ("train", "test") if not out[s]]
        if empty:
            counts = {s: len(v) for s, v in out.items()}
            raise ctx.error(f"manifest {csv_path} has no rows with split {' or '.join(empty)} "
                            f"(rows per split: {counts}).")
        available = sorted({s.generator for samples in out.values() for s in samples})
        chosen = set(check_known(generators, available, "data.generators / data.test_generators", csv_path))
        return {split: [s for s in samples if s.generator in chosen] for split, samples in out.items()}

    def release_order(self, root: str | Path) -> list[str]:
        """The generators oldest first, from the ``date`` column of the synthetic images' rows."""
        ctx = ScanContext(self, Path(root))
        csv_path = self.csv_path(root)
        if not csv_path.is_file():
            raise ctx.error(f"manifest {csv_path} does not exist.")
        dated: list[tuple[str, str]] = []
        for line, row in _rows(csv_path, ctx):
            if "date" not in row:
                raise ctx.error(f"{csv_path} has no date column, so the generators have no release order.",
                                "Add a date column (YYYY-MM-DD) or give data.generator_order=[oldest,...,newest].")
            if MANIFEST_LABELS.get(row["label"].lower()) == 1 and row["generator"]:
                dated.append((row["generator"], row["date"]))
        return order_from_dates(dated)

    def check_command(self, root: str | Path) -> str:
        command = super().check_command(root)
        shown = self.shown_name(root)
        if shown != DEFAULT_CSV:
            command += f" data.layout.manifest={Path(root) / shown}"
        return command

    def expected_tree(self, root: str | Path = "<root>") -> str:
        name = self.shown_name(root) if self.manifest is not None else DEFAULT_CSV
        return (render_tree(f"{str(root).rstrip('/')}/", self._nodes(name)) + "\n"
                + MANIFEST_EXAMPLE.format(name=name))

    def tree_nodes(self) -> list[Node]:
        return self._nodes(DEFAULT_CSV)

    @staticmethod
    def _nodes(csv_name: str) -> list[Node]:
        return [
            Node(csv_name, "CSV with header " + ",".join(MANIFEST_COLUMNS) + " (data.layout.manifest)"),
            Node("<any folders>/", "the images; CSV paths are relative to the CSV's folder, or absolute"),
        ]


def _rows(csv_path: Path, ctx: ScanContext) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of every data row, after checking the header; values are stripped strings."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in MANIFEST_COLUMNS if c not in header]
        if missing:
            raise ctx.error(f"{csv_path} line 1: the header {header} lacks the column(s) {missing}.",
                            f"The first line must be: {','.join(MANIFEST_COLUMNS)}")
        reader.fieldnames = header
        for row in reader:
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}


def _parse_row(row: dict[str, str], base: Path, root: Path) -> tuple[str | None, Sample | None, str]:
    """``(problem, sample, split)``: a problem text (without the location) or the sample and its split."""
    label = MANIFEST_LABELS.get(row["label"].lower())
    if label is None:
        return f"label '{row['label']}' is not one of {list(MANIFEST_LABELS)}", None, ""
    split = row["split"].lower()
    if split not in SPLITS:
        return f"split '{row['split']}' is not one of {list(SPLITS)}", None, ""
    if not row["generator"]:
        return "the generator is empty", None, ""
    if not row["path"]:
        return "the path is empty", None, ""
    path = base / row["path"]
    if not path.is_file():
        return f"file '{row['path']}' does not exist (looked for {path})", None, ""
    return None, Sample(str(path), label, row["generator"], relative_name(path, root), row.get("source", "")), split


def _read_manifest(csv_path: Path, ctx: ScanContext) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for line, row in _rows(csv_path, ctx):
        problem, sample, split = _parse_row(row, csv_path.parent, ctx.root)
        if sample is not None and sample.path in first_line:
            problem = f"file '{row['path']}' is already listed on line {first_line[sample.path]}"
        if problem:
            problems.append(f"{csv_path} line {line}: {problem}")
            continue
        if not ctx.walk.admits(sample.path):  # a link out of the dataset: skipped and reported, not read
            continue
        first_line[sample.path] = line
        out[split].append(sample)
    if problems:
        shown = "\n  ".join(problems[:BAD_ROWS_SHOWN])
        raise ctx.error(f"manifest {csv_path} has {len(problems)} bad row(s)"
                        + (f" (the first {BAD_ROWS_SHOWN} shown)" if len(problems) > BAD_ROWS_SHOWN else "")
                        + f":\n  {shown}")
    return out
