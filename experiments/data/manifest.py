"""``layout="manifest"``: any image files, listed in a CSV.

The CSV has the header ``path,label,generator,split`` (more columns are allowed and ignored):

* ``path``: relative to the CSV's folder, or absolute;
* ``label``: ``0``, ``real`` or ``nature`` for real images; ``1``, ``fake`` or ``ai`` for synthetic ones
  (case-insensitive);
* ``generator``: any non-empty name (real images take the name of the generator they are paired with,
  as GenImage's ``nature`` folders do, or a name of their own);
* ``split``: ``train``, ``val`` or ``test`` (case-insensitive). Without ``val`` rows, the datamodule holds
  out a seeded, stratified part of ``train`` as val, as for GenImage.

Every row is checked (known label and split, non-empty generator, the file exists, no path listed twice)
and the errors name the CSV, the line number and the bad value.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Sequence

from experiments.data.layout_trees import MANIFEST_COLUMNS, MANIFEST_LABELS
from experiments.data.layouts import LayoutContext, Sample, check_known, few

SPLITS = ("train", "val", "test")
#: how many bad rows an error message lists.
BAD_ROWS_SHOWN = 5


def _context(csv_path: Path, root: Path | None) -> LayoutContext:
    root = root or csv_path.parent
    try:
        shown = str(csv_path.relative_to(root))
    except ValueError:
        shown = str(csv_path)
    return LayoutContext("manifest", root, manifest=shown)


def _rows(csv_path: Path, ctx: LayoutContext) -> Iterator[tuple[int, dict[str, str]]]:
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


def _parse_row(row: dict[str, str], base: Path) -> tuple[str | None, Sample | None, str]:
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
    return None, Sample(str(path), label, row["generator"]), split


def _read_manifest(csv_path: Path, ctx: LayoutContext) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for line, row in _rows(csv_path, ctx):
        problem, sample, split = _parse_row(row, csv_path.parent)
        if sample is not None and sample.path in first_line:
            problem = f"file '{row['path']}' is already listed on line {first_line[sample.path]}"
        if problem:
            problems.append(f"{csv_path} line {line}: {problem}")
            continue
        first_line[sample.path] = line
        out[split].append(sample)
    if problems:
        shown = "\n  ".join(problems[:BAD_ROWS_SHOWN])
        raise ctx.error(f"manifest {csv_path} has {len(problems)} bad row(s)"
                        + (f" (the first {BAD_ROWS_SHOWN} shown)" if len(problems) > BAD_ROWS_SHOWN else "")
                        + f":\n  {shown}")
    return out


def scan_manifest(
    csv_path: str | Path,
    root: str | Path | None = None,
    generators: Sequence[str] | None = None,
) -> dict[str, list[Sample]]:
    """Read a manifest CSV into ``{"train": [...], "val": [...], "test": [...]}`` (``val`` may be empty).

    Args:
        csv_path: the CSV (relative paths in it are taken from its folder).
        root: the dataset root named in error messages (None = the CSV's folder).
        generators: keep only these generators (None = all); an unknown name is an error.
    """
    csv_path = Path(csv_path)
    ctx = _context(csv_path, Path(root) if root is not None else None)
    if not csv_path.is_file():
        near = sorted(p.name for p in csv_path.parent.iterdir()) if csv_path.parent.is_dir() else []
        raise ctx.error(f"manifest {csv_path} does not exist"
                        + (f" (found in {csv_path.parent}: {few(near)})." if near else "."),
                        "Set data.manifest=/path/to/your.csv, or write <root>/manifest.csv.")
    out = _read_manifest(csv_path, ctx)
    empty = [s for s in ("train", "test") if not out[s]]
    if empty:
        counts = {s: len(v) for s, v in out.items()}
        raise ctx.error(f"manifest {csv_path} has no rows with split {' or '.join(empty)} (rows per split: {counts}).")
    available = sorted({s.generator for samples in out.values() for s in samples})
    chosen = set(check_known(generators, available, "data.generators / data.test_generators", csv_path))
    return {split: [s for s in samples if s.generator in chosen] for split, samples in out.items()}

