"""The table of ``task=report``: what a deployment reads, one row per detector.

Columns, in this order (:data:`HEADERS`): ``model``, accuracy at 0.5, accuracy at the threshold chosen on
val (``test/accuracy_at_val_threshold``), AUROC, the TPR and FPR on test at the operating point chosen on val's
real images (``test/tpr_at_op``, ``test/fpr_at_op``; :mod:`experiments.evaluation.deployment`), AP, TPR at 5%
FPR, the ECE before and after the run's val-fitted calibrator (``0.043 → 0.073``), fit time and parameter
count. A metric with an interval reads
``0.872 [0.836, 0.908]``: for one run the stratified bootstrap interval the run logged, with several runs
(seeds) ``mean ± std [Student-t interval over the seeds] (n=3)`` (:mod:`experiments.evaluation.seed_summary`).
The same rows are printed and written as Markdown (:func:`markdown_table`), which is what README's demo
table is pasted from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from experiments.evaluation.seed_summary import RunRow, aggregate, format_cell, interval_cell, intervals


@dataclass(frozen=True)
class Column:
    """A metric column: its header, the logged metric (``<split>/<metric>``) and, for a before → after pair,
    the metric after."""

    header: str
    metric: str
    after: str | None = None


#: The operating point of the report's header (``eval.operating_point``'s default); a run chosen at another
#: target FPR names its own in its cells (``0.700 [0.6, 0.8] (fpr@0.01)``).
DEFAULT_TARGET_FPR = 0.05

#: The target FPR a run's operating point was chosen at (:mod:`experiments.evaluation.deployment`).
TARGET_FPR = "op/target_fpr"

#: The metric columns of the report, in order.
METRIC_COLUMNS = (
    Column("accuracy at 0.5", "accuracy"),
    Column("accuracy at val threshold", "accuracy_at_val_threshold"),
    Column("AUROC", "auc"),
    Column(f"TPR at val op (fpr@{DEFAULT_TARGET_FPR:g})", "tpr_at_op"),
    Column("FPR at val op", "fpr_at_op"),
    Column("AP", "ap"),
    Column("TPR at 5% FPR", "tpr_at_5fpr"),
    Column("ECE → calibrated", "ece", "ece_calibrated"),
)

#: The metrics every run logs outside the split: fit time and parameter count.
FIT_SECONDS, PARAMS = "time/fit_seconds", "model/params"

#: Every column of the report, as printed and written to Markdown.
HEADERS = ("model", *(c.header for c in METRIC_COLUMNS), "fit time (s)", "params")


def metric_names(split: str = "test") -> list[str]:
    """Every logged metric the report reads for ``split``: each column's, and the ECE after calibration."""
    names = [f"{split}/{c.metric}" for c in METRIC_COLUMNS]
    return names + [f"{split}/{c.after}" for c in METRIC_COLUMNS if c.after]


@dataclass
class ReportTable:
    """The report's numbers and cells: per model ``(mean, std, n)`` and ``(low, high)`` of each metric,
    the runs per model, and one row of :data:`HEADERS` cells per model."""

    table: dict[str, dict[str, tuple[float, float, int]]]
    bounds: dict[str, dict[str, tuple[float, float]]]
    n_runs: dict[str, int]
    body: list[list[str]]


def report_table(rows: list[RunRow], split: str = "test", confidence: float = 0.95, digits: int = 3) -> ReportTable:
    """The report of ``rows`` (finished training runs): one row of cells per model, sorted by model."""
    metrics = metric_names(split)
    table = aggregate(rows, metrics + [FIT_SECONDS, PARAMS, TARGET_FPR])
    bounds = intervals(rows, metrics, confidence)
    n_runs = {model: sum(r.model == model for r in rows) for model in table}
    body = []
    for model, cols in table.items():
        cells = [model]
        for column in METRIC_COLUMNS:
            name = f"{split}/{column.metric}"
            if column.after:
                cells.append(before_after(cols[name], cols[f"{split}/{column.after}"], digits))
            else:
                cells.append(interval_cell(*cols[name], *bounds[model][name], digits=digits)
                             + (_target_note(cols[TARGET_FPR]) if column.metric.endswith("_at_op") else ""))
        t_mean, t_std, t_n = cols[FIT_SECONDS]
        p_mean = cols[PARAMS][0]
        cells += [format_cell(t_mean, t_std, t_n, 1), "n/a" if math.isnan(p_mean) else f"{int(p_mean):,}"]
        body.append(cells)
    return ReportTable(table, bounds, n_runs, body)


def _target_note(target: tuple[float, float, int]) -> str:
    """`` (fpr@0.01)`` when a model's runs chose their operating point at another FPR than the header's,
    `` (mixed targets)`` when its runs disagree, and nothing otherwise."""
    mean, std, n = target
    same = std <= 1e-12
    if n == 0 or (same and math.isclose(mean, DEFAULT_TARGET_FPR)):
        return ""
    return f" (fpr@{mean:g})" if same else " (mixed targets)"


def before_after(before: tuple[float, float, int], after: tuple[float, float, int], digits: int = 3) -> str:
    """``0.043 → 0.073`` (means over the runs); ``0.043`` when there is no after; ``n/a`` without a before."""
    if before[2] == 0:
        return "n/a"
    if after[2] == 0:
        return f"{before[0]:.{digits}f}"
    return f"{before[0]:.{digits}f} → {after[0]:.{digits}f}"


def markdown_table(body: list[list[str]]) -> str:
    """The rows as a Markdown table under :data:`HEADERS`: the model left-aligned, the numbers right-aligned."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|---|" + "---:|" * (len(HEADERS) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def markdown_headers(text: str) -> list[str]:
    """The column names of the first Markdown table in ``text`` (its first ``| ... |`` line)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            return [cell.strip() for cell in line[1:-1].split("|")]
    raise ValueError("no Markdown table found")
