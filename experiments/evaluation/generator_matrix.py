"""Cross-generator matrices: how a detector trained on one generator scores on each test generator.

The protocols are those of GenImage (Zhu et al., 2023, "GenImage: a million-scale benchmark for detecting
AI-generated image"): train on one generator and test on all (rows = train generator, columns = test
generator), and its leave-one-out variant (train on all generators but one, test on the held-out one); and
AI-GenBench's chronological protocol (Pellegrini et al., 2025: train on the generators released first, test on
the later ones in windows, :func:`chronological_table`).
A record is one (run, test generator) pair: ``model``, ``seed``, ``train``, ``test`` and the metric values
``test/<generator>/<metric>`` (with their bootstrap bounds) a training run logs. Everything here is pure.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Per-generator test metric written by ``train.py``: ``test/<generator>/<metric>``.
_PER_GENERATOR = re.compile(r"^test/([^/]+)/([^/]+)$")


def build_matrix(records: Iterable[Mapping[str, Any]], metric: str = "auc") -> tuple[np.ndarray, list[str], list[str]]:
    """The train x test generator matrix of ``metric`` from flat records.

    Each record is a mapping with ``train`` (train generator), ``test`` (test
    generator) and the value under ``metric``; records without a finite value are
    ignored. Several records for one cell (seeds) are averaged. Rows are the
    sorted train generators; columns are the same names first (those tested, so
    the diagonal is train == test) followed by the sorted test-only generators
    (leave_one_out's rows ``all_but_<g>`` are never tested: its columns are the
    held-out generators). Cells without
    a record are NaN.

    Returns ``(matrix, row_names, col_names)`` with ``matrix[i, j]`` the score
    of the detector trained on ``row_names[i]`` tested on ``col_names[j]``.
    """
    records = list(records)
    rows = {str(record["train"]) for record in records}
    tests = {str(record["test"]) for record in records}
    cells = _finite_cells(records, metric)
    row_names = sorted(rows)
    col_names = [name for name in row_names if name in tests] + sorted(tests - rows)
    matrix = np.full((len(row_names), len(col_names)), np.nan)
    for i, train in enumerate(row_names):
        for j, test in enumerate(col_names):
            if cells.get((train, test)):
                matrix[i, j] = float(np.mean([float(r[metric]) for r in cells[(train, test)]]))
    return matrix, row_names, col_names


def _finite_cells(records: Iterable[Mapping[str, Any]], metric: str) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """The records with a finite ``metric``, grouped by cell: (train generator, test generator)."""
    cells: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        value = record.get(metric)
        if value is not None and math.isfinite(float(value)):
            cells[(str(record["train"]), str(record["test"]))].append(record)
    return cells


def summarize(matrix: np.ndarray, row_names: Sequence[str], col_names: Sequence[str]) -> dict[str, float]:
    """``diagonal_mean`` (train == test), ``off_diagonal_mean`` and ``off_diagonal_min`` (unseen generators: on
    average, and the worst one) over finite cells; NaN if none."""
    same = np.array([[r == c for c in col_names] for r in row_names], dtype=bool).reshape(matrix.shape)
    finite = np.isfinite(matrix)
    diagonal = matrix[same & finite]
    off = matrix[~same & finite]
    return {
        "diagonal_mean": float(diagonal.mean()) if diagonal.size else math.nan,
        "off_diagonal_mean": float(off.mean()) if off.size else math.nan,
        "off_diagonal_min": float(off.min()) if off.size else math.nan,
    }


def cell_intervals(records: Iterable[Mapping[str, Any]], metric: str, row_names: Sequence[str],
                   col_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap interval (``<metric>_ci_low``, ``<metric>_ci_high``, as training logs them per test generator)
    of each cell of :func:`build_matrix`'s matrix. A cell averaged over several seeds has no single interval
    (the seeds' spread is another quantity), so it, and a cell without bounds, is NaN."""
    cells = _finite_cells(records, metric)
    low = np.full((len(row_names), len(col_names)), np.nan)
    high = np.full_like(low, np.nan)
    for i, train in enumerate(row_names):
        for j, test in enumerate(col_names):
            cell = cells.get((train, test), [])
            if len(cell) == 1:
                low[i, j] = cell[0].get(f"{metric}_ci_low", math.nan)
                high[i, j] = cell[0].get(f"{metric}_ci_high", math.nan)
    return low, high


def records_from_run(model: str, train_generator: str, seed: str, metrics: Mapping[str, float],
                     metric_names: Sequence[str]) -> list[dict[str, Any]]:
    """One record per test generator from a run's ``test/<generator>/<metric>`` values and their bootstrap
    bounds ``test/<generator>/<metric>_ci_low`` / ``_ci_high``."""
    wanted = {f"{m}{suffix}" for m in metric_names for suffix in ("", "_ci_low", "_ci_high")}
    by_generator: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        match = _PER_GENERATOR.match(key)
        if match and match.group(2) in wanted:
            generator = match.group(1)
            record = by_generator.setdefault(
                generator, {"model": model, "seed": seed, "train": train_generator, "test": generator})
            record[match.group(2)] = float(value)
    return list(by_generator.values())


def held_out_table(records_by_model: Mapping[str, Iterable[Mapping[str, Any]]], metric: str = "auc"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Leave-one-out's table: one row per held-out generator, one column per detector.

    A leave-one-out run trains on every generator but one (its row ``all_but_<g>``) and tests on the held-out
    one, so each detector has one score per held-out generator: the cell (train ``all_but_<g>``, test ``g``);
    the N x N matrix of :func:`build_matrix` would be NaN off those cells. Several seeds of a cell are
    averaged and then have no single interval, as in :func:`cell_intervals`. Returns ``(values, low, high,
    generators, models)``, each array (generators, models), NaN where a detector has no run for a generator.
    """
    cells_by_model = {model: _finite_cells(records, metric) for model, records in records_by_model.items()}
    models = sorted(cells_by_model)
    generators = sorted({test for cells in cells_by_model.values() for (train, test) in cells if train != test})
    values = np.full((len(generators), len(models)), np.nan)
    low, high = np.full_like(values, np.nan), np.full_like(values, np.nan)
    for j, model in enumerate(models):
        for (train, test), cell in cells_by_model[model].items():
            if train == test:
                continue
            i = generators.index(test)
            values[i, j] = float(np.mean([float(r[metric]) for r in cell]))
            if len(cell) == 1:
                low[i, j] = cell[0].get(f"{metric}_ci_low", math.nan)
                high[i, j] = cell[0].get(f"{metric}_ci_high", math.nan)
    return values, low, high, generators, models


def held_out_summary(values: np.ndarray) -> dict[str, float]:
    """``held_out_mean`` and ``held_out_min`` (the worst held-out generator) of one detector's column of
    :func:`held_out_table`, over finite cells; NaN if none."""
    finite = values[np.isfinite(values)]
    return {"held_out_mean": float(finite.mean()) if finite.size else math.nan,
            "held_out_min": float(finite.min()) if finite.size else math.nan}


def chronological_table(records_by_model: Mapping[str, Iterable[Mapping[str, Any]]], metric: str = "auc",
                        window: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, str]], list[str]]:
    """The chronological protocol's table (AI-GenBench, Pellegrini et al. 2025): one row per (training horizon,
    test window), one column per detector.

    A record of a chronological run carries its release ``order`` (comma-joined, oldest first) and ``k`` (the
    generators trained on, its ``train`` ``upto_<order[k-1]>``); the run's later generators are read in windows
    of ``window`` generators (:func:`~experiments.data.chronology.later_windows`). A cell is the detector's score on
    the window: the score of its one generator, with that generator's bootstrap interval; for a window of several
    generators, the mean of their scores (no single interval). Seeds are averaged (and then have no interval, as
    in :func:`cell_intervals`). Rows are ``(train, window)`` with ``window`` the window's generators joined by
    ``+``, by order, ``k`` and window. Returns ``(values, low, high, rows, models)``, NaN where a detector has no
    score for a row.
    """
    from experiments.data.chronology import later_windows

    cells_by_model = {model: _finite_cells(records, metric) for model, records in records_by_model.items()}
    horizons = {(str(r["order"]), int(r["k"]), str(r["train"])) for records in records_by_model.values()
                for r in records}
    rows: list[tuple[str, str]] = []
    members: list[list[str]] = []
    for order, k, train in sorted(horizons):
        for generators in later_windows(order.split(","), k, window):
            if (train, "+".join(generators)) not in rows:
                rows.append((train, "+".join(generators)))
                members.append(generators)
    models = sorted(cells_by_model)
    values = np.full((len(rows), len(models)), np.nan)
    low, high = np.full_like(values, np.nan), np.full_like(values, np.nan)
    for j, model in enumerate(models):
        cells = cells_by_model[model]
        for i, ((train, _), generators) in enumerate(zip(rows, members)):
            scored = [cells[(train, g)] for g in generators if cells.get((train, g))]
            if not scored:
                continue
            values[i, j] = float(np.mean([np.mean([float(r[metric]) for r in cell]) for cell in scored]))
            if len(generators) == 1 and len(scored[0]) == 1:
                low[i, j] = scored[0][0].get(f"{metric}_ci_low", math.nan)
                high[i, j] = scored[0][0].get(f"{metric}_ci_high", math.nan)
    return values, low, high, rows, models


def chronological_summary(values: np.ndarray, first_window: np.ndarray) -> dict[str, float]:
    """``window_mean`` and ``window_min`` (the worst window) of one detector's column of
    :func:`chronological_table`, and ``next_window_mean``, over the rows where ``first_window`` is true (each
    horizon's first window: the generators released right after it); finite cells only, NaN if none."""
    finite = values[np.isfinite(values)]
    nxt = values[first_window & np.isfinite(values)]
    return {"window_mean": float(finite.mean()) if finite.size else math.nan,
            "window_min": float(finite.min()) if finite.size else math.nan,
            "next_window_mean": float(nxt.mean()) if nxt.size else math.nan}


def write_matrix_csv(path: Path, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str],
                     corner: str = "train \\ test") -> Path:
    """``matrix`` as a CSV at ``path``: a header of ``corner`` and the column names, then one row per name."""
    with Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([corner, *cols])
        writer.writerows([name, *values.tolist()] for name, values in zip(rows, matrix))
    return Path(path)
