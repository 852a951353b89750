"""What ``task=ood_stress`` writes: robustness curves, the AUROC tables (Markdown, CSV, console) and the flat
``ood/<perturbation>/<strength>/<metric>`` values logged to MLflow."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from experiments.data.perturbations import Perturbation, metric_prefix
from experiments.evaluation.curves import plot_robustness_curves
from experiments.inference.stress import OOD_METRICS

#: ``{detector label: {grid point key: {metric: value}}}``, as :func:`~experiments.inference.stress.evaluate_detectors`
Results = dict[str, dict[str, dict[str, float]]]


def _x_value(perturbation: Perturbation, position: int) -> float:
    return float(position) if isinstance(perturbation.strength, tuple) else float(perturbation.strength)


def write_curves(results: Results, grid: Sequence[Perturbation], out_dir: Path) -> list[Path]:
    """One ``robustness_<perturbation>.png`` per perturbation: AUROC versus strength, one line per detector."""
    by_name: dict[str, list[Perturbation]] = defaultdict(list)
    for p in grid:
        by_name[p.name].append(p)
    paths = []
    for name, points in by_name.items():
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
        writer.writerow(["detector", "perturbation", "strength", *OOD_METRICS, "n"])
        for label, res in results.items():
            for p in grid:
                writer.writerow([label, p.name, p.label, *(res[p.key][m] for m in (*OOD_METRICS, "n"))])
    return md, wide, long


def print_tables(results: Results, grid: Sequence[Perturbation]) -> None:
    """The AUROC table on the console, one block of columns per perturbation (rows = detector)."""
    console = Console(width=max(100, Console().width))
    for name in dict.fromkeys(p.name for p in grid):
        points = [p for p in grid if p.name == name]
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
