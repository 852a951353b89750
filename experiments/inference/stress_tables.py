"""What ``task=ood_stress`` writes: robustness curves, the AUROC tables (Markdown, CSV, console) and the flat
``ood/<perturbation>/<strength>/<metric>`` values logged to MLflow; for the laundering chains
(:mod:`experiments.data.laundering`, ordinal levels) severity curves and the severity table (AUROC and TPR at
the operating point, one row per detector and chain)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from experiments.data.perturbations import Perturbation, metric_prefix
from experiments.evaluation.curves import plot_robustness_curves, plot_severity_curves
from experiments.inference.stress import OOD_METRICS

#: ``{detector label: {grid point key: {metric: value}}}``, as :func:`~experiments.inference.stress.evaluate_detectors`
Results = dict[str, dict[str, dict[str, float]]]


def _x_value(perturbation: Perturbation, position: int) -> float:
    return float(position) if isinstance(perturbation.strength, tuple) else float(perturbation.strength)


def _by_name(grid: Sequence[Perturbation]) -> dict[str, list[Perturbation]]:
    by_name: dict[str, list[Perturbation]] = defaultdict(list)
    for p in grid:
        by_name[p.name].append(p)
    return by_name


def _ordinal(points: Sequence[Perturbation]) -> bool:
    return points[0].kind is not None and points[0].kind.ordinal


def write_curves(results: Results, grid: Sequence[Perturbation], out_dir: Path) -> list[Path]:
    """One ``robustness_<perturbation>.png`` per perturbation: AUROC versus strength, one line per detector; for
    a laundering chain (ordinal levels) ``severity_<chain>.png``: AUROC, and TPR and FPR at the operating point, per level."""
    paths = []
    for name, points in _by_name(grid).items():
        if _ordinal(points):
            panels = {ylabel: {label: [res[p.key][metric] for p in points] for label, res in results.items()}
                      for metric, ylabel in (("auc", "AUROC"), ("tpr_at_op", "TPR at the operating point"),
                                             ("fpr_at_op", "FPR at the operating point"))}
            path = out_dir / f"severity_{name}.png"
            plot_severity_curves(panels, [p.label for p in points], path, title=f"laundering: {name}",
                                 xlabel=points[0].kind.axis_label(points))
            paths.append(path)
            continue
        xlabel = points[0].kind.axis_label(points) if points[0].kind is not None else "strength"
        curves = {label: [(_x_value(p, i), res[p.key]["auc"]) for i, p in enumerate(points)]
                  for label, res in results.items()}
        path = out_dir / f"robustness_{name}.png"
        plot_robustness_curves(curves, path, xlabel=xlabel, ylabel="AUROC", title=f"OOD stress: {name}")
        paths.append(path)
    return paths


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def write_tables(results: Results, grid: Sequence[Perturbation], out_dir: Path) -> tuple[Path, Path, Path]:
    """``ood_auroc.md`` / ``ood_auroc.csv`` (detector x grid point AUROC) and the long ``ood_metrics.csv``."""
    keys = [p.key for p in grid]
    md = out_dir / "ood_auroc.md"
    lines = ["# OOD stress: AUROC per perturbation/strength", "",
             "| detector | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {label} | " + " | ".join(_fmt(res[k]["auc"]) for k in keys) + " |" for label, res in results.items()]
    md.write_text("\n".join(lines) + "\n")
    wide = out_dir / "ood_auroc.csv"
    with wide.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["detector", *keys])
        for label, res in results.items():
            writer.writerow([label, *(res[k]["auc"] for k in keys)])
    long = out_dir / "ood_metrics.csv"
    with long.open("w", newline="") as fh:
        writer = csv.writer(fh)
        columns = (*OOD_METRICS, "n", "skipped", "upscaled")
        writer.writerow(["detector", "perturbation", "strength", *columns])
        for label, res in results.items():
            for p in grid:
                writer.writerow([label, p.name, p.label, *(res[p.key].get(m, "") for m in columns)])
    return md, wide, long


def print_tables(results: Results, grid: Sequence[Perturbation]) -> None:
    """The AUROC table on the console, one block of columns per perturbation (rows = detector); the laundering
    chains are printed by :func:`print_severity_table`."""
    console = Console(width=max(100, Console().width))
    for name, points in _by_name(grid).items():
        if _ordinal(points):  # the laundering chains: print_severity_table
            continue
        table = Table(title=f"OOD stress AUROC: {name}")
        table.add_column("detector")
        for p in points:
            table.add_column(p.label, justify="right")
        for label, res in results.items():
            table.add_row(label, *(_fmt(res[p.key]["auc"]) for p in points))
        console.print(table)


def ood_metric_items(result: dict[str, dict[str, float]], grid: Sequence[Perturbation]) -> dict[str, float]:
    """Flat ``ood/<perturbation>/<strength>/<metric>`` values of one detector (NaN dropped)."""
    out = {}
    for p in grid:
        for metric in OOD_METRICS:
            value = float(result[p.key][metric])
            if not math.isnan(value):
                out[f"{metric_prefix(p)}/{metric}"] = value
    return out


# -- the laundering severity table ---------------------------------------------------------------------
def _cell(metrics: dict[str, float]) -> str:
    return " / ".join(_fmt(metrics.get(m, math.nan)) for m in ("auc", "tpr_at_op", "fpr_at_op"))


def severity_rows(results: Results, grid: Sequence[Perturbation]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """``{chain: (level labels, rows)}`` of the ordinal chains of ``grid``: a row is the detector then one
    ``"AUROC / TPR@op / FPR@op"`` cell per level; empty when the grid has no laundering chain."""
    out = {}
    for name, points in _by_name(grid).items():
        if _ordinal(points):
            rows = [[label, *(_cell(res[p.key]) for p in points)] for label, res in results.items()]
            out[name] = ([p.label for p in points], rows)
    return out


def write_severity_table(results: Results, grid: Sequence[Perturbation], out_dir: Path) -> list[Path]:
    """``laundering_severity.md`` (a table per chain: one row per detector, one column per level, cells
    ``AUROC / TPR@op / FPR@op``) and the long ``laundering_severity.csv`` (one row per detector, chain and level, with
    the counts of skipped and upscaled images); nothing when the grid has no laundering chain."""
    tables = severity_rows(results, grid)
    if not tables:
        return []
    md = out_dir / "laundering_severity.md"
    lines = ["# Laundering: AUROC / TPR / FPR at the operating point per chain and level", ""]
    for name, (levels, rows) in tables.items():
        lines += [f"## {name}", "", "| detector | " + " | ".join(levels) + " |", "|---|" + "---:|" * len(levels)]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    md.write_text("\n".join(lines))
    long = out_dir / "laundering_severity.csv"
    columns = ("auc", "tpr_at_op", "fpr_at_op", "n", "skipped", "upscaled")
    with long.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["detector", "chain", "position", "level", *columns])
        for label, res in results.items():
            for name, points in _by_name(grid).items():
                if _ordinal(points):
                    for i, p in enumerate(points):
                        writer.writerow([label, name, i, p.label, *(res[p.key].get(m, "") for m in columns)])
    return [md, long]


def print_severity_table(results: Results, grid: Sequence[Perturbation]) -> None:
    """The severity table on the console, one block per chain (rows = detector, columns = levels), and a line
    per level whose images were skipped or upscaled for being smaller than the crop."""
    console = Console(width=max(100, Console().width))
    for name, (levels, rows) in severity_rows(results, grid).items():
        table = Table(title=f"laundering: {name} (AUROC / TPR / FPR at the operating point)")
        table.add_column("detector")
        for level in levels:
            table.add_column(level, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    resized: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    for label, res in results.items():
        for p in grid:
            skipped, upscaled = res[p.key].get("skipped", 0), res[p.key].get("upscaled", 0)
            if skipped or upscaled:
                resized[(p.key, skipped, upscaled)].append(label)
    for (key, skipped, upscaled), labels in resized.items():
        console.print(f"{key}: {skipped} image(s) skipped as smaller than the crop, {upscaled} upscaled to the crop "
                      f"size (ood.too_small), for {', '.join(labels)}")
