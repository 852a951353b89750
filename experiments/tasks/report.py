"""``task=report``: compare every detector of an MLflow experiment in one table.

Reads the finished training runs of the experiment, keeps the latest run per
(model, seed) unless told to keep all, and prints and writes (``comparison.md``,
``comparison.csv``, a bar plot) the table of :mod:`experiments.evaluation.report_table`:
accuracy at 0.5 and at the val-chosen threshold, AUROC, TPR and FPR at the operating point chosen on val's
reals, AP, TPR at 5% FPR, ECE before
and after calibration, fit time and parameter count. A metric with an interval is shown
as ``0.942 [0.918, 0.963]``: for one run, the stratified bootstrap interval the run
logged (``test/<metric>_ci_low`` / ``_ci_high``); with several seeds per model,
``mean ± std [Student-t interval over the seeds] (n)``. On a console narrower than the
table, it prints one row per (model, metric). The report is also logged to MLflow as a
run tagged ``task=report`` in ``report-<experiment>``. ``parent=<run id>`` reports the runs of that sweep only
(the children of its parent run, in its experiment).
"""

from __future__ import annotations

import csv
import logging
import math
import time

import mlflow
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from experiments.evaluation.curves import plot_bar_comparison
from experiments.evaluation.plotting import with_subject
from experiments.evaluation.real_sources import worst_source_lines
from experiments.evaluation.console_tables import natural_width, print_fitted
from experiments.evaluation.report_table import (
    FIT_SECONDS,
    HEADERS,
    METRIC_COLUMNS,
    PARAMS,
    markdown_table,
    metric_names,
    report_table,
)
from experiments.evaluation.seed_summary import RunRow
from experiments.runs import finished_training_runs, select_runs, sweep_experiment, tag
from experiments.runs import NoRunsFound
from experiments.safe_paths import inside, plain_name
from experiments.tracking import resolve_tracking_uri
from experiments.tracking import announce_outputs, create_run, end_run, task_experiment_name

log = logging.getLogger(__name__)


def fetch_runs(client: mlflow.MlflowClient, experiment_name: str, select: str = "latest",
               parent: str | None = None) -> list[RunRow]:
    """Finished ``task=train`` runs (the children of the sweep ``parent`` only, when given); ``select="latest"``
    keeps the newest per (model, seed)."""
    runs = select_runs(finished_training_runs(client, experiment_name, parent=parent),
                       lambda r: (tag(r, "model"), tag(r, "seed")), select)
    rows = [RunRow(r.info.run_id, tag(r, "model"), tag(r, "seed"), r.info.start_time, dict(r.data.metrics),
                   tag(r, "output_dir", "-"))
            for r in runs]
    return sorted(rows, key=lambda r: (r.model, r.seed))


def report(cfg: DictConfig) -> dict:
    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = cfg.get("parent")
    if parent:  # a sweep's runs: its experiment, its children
        with open_dict(cfg):
            cfg.task.experiment_name = sweep_experiment(client, parent)
    experiment = cfg.task.experiment_name
    rows = fetch_runs(client, experiment, cfg.task.select, parent)
    if not rows:
        raise NoRunsFound(f"no finished training runs in MLflow experiment '{experiment}' ({uri}); train some first")
    split = cfg.task.split
    confidence = float(cfg.get("stats", {}).get("confidence", 0.95))
    result = report_table(rows, split, confidence, int(cfg.task.get("digits", 3)))
    table, bounds, n_runs = result.table, result.bounds, result.n_runs
    metric_cols = metric_names(split)
    extra_cols = [FIT_SECONDS, PARAMS]

    out_dir = inside(cfg.paths.report_dir, plain_name(experiment, "task.experiment_name"))
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "comparison.md"
    worst = worst_source_lines([(f"{r.model} (seed {r.seed})", r.metrics) for r in rows])
    worst_md = (f"\n## {WORST_SOURCE}\n\n" + "".join(f"- {w}\n" for w in worst)) if worst else ""
    md.write_text(f"# {experiment}: {split} metrics\n\n" + markdown_table(result.body)
                  + f"\n{interval_note(confidence)}\n" + worst_md)
    csv_path = out_dir / "comparison.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "n_runs"] + [f"{c}_{s}" for c in metric_cols + extra_cols for s in ("mean", "std")]
                        + [f"{c}_ci_{s}" for c in metric_cols for s in ("low", "high")] + ["interval"])
        for model, cols in table.items():
            writer.writerow([model, n_runs[model]] + [v for c in metric_cols + extra_cols for v in cols[c][:2]]
                            + [v for c in metric_cols for v in bounds[model][c]]
                            + ["bootstrap" if n_runs[model] == 1 else "t over seeds"])
    bar_metrics = [c.metric for c in METRIC_COLUMNS if not c.after]
    bars = with_subject(f"{experiment}, {split} split", plot_bar_comparison,
        {model: {m: cols[f"{split}/{m}"][0] for m in bar_metrics} for model, cols in table.items()},
        bar_metrics, out_dir / "comparison.png",
    )

    run_id = create_run(cfg, task_experiment_name(cfg), f"report-{experiment}",
                        {"task": "report", "reported_experiment": experiment, "data": str(cfg.data.name)})
    client.log_batch(run_id, metrics=report_metrics(table, metric_cols, n_runs))
    for path in (md, csv_path, bars):
        client.log_artifact(run_id, str(path), "report")
    client.log_param(run_id, "runs", ",".join(r.run_id for r in rows)[:6000])
    end_run(client, run_id)

    console = Console()
    print_fitted(console, f"{experiment}: {split} metrics ({len(rows)} runs)", HEADERS, result.body)
    console.print(interval_note(confidence), markup=False)
    print_runs(console, rows)
    if worst:
        console.print("\n".join([f"{WORST_SOURCE}:", *(f"  {w}" for w in worst)]), markup=False, soft_wrap=True)
    console.print(f"report table (Markdown): {md}", soft_wrap=True)
    console.print(f"report written to {md}, {csv_path}, {bars}", soft_wrap=True)
    announce_outputs(out_dir, run_id, uri)
    return {"table": table, "intervals": bounds, "rows": rows, "body": result.body, "markdown": md, "csv": csv_path,
            "plot": bars, "run_id": run_id}


#: the heading of the lines naming each run's real source with the highest FPR (task=train's test/source/*)
WORST_SOURCE = "Real source with the highest false-positive rate at the operating point"


def interval_note(confidence: float) -> str:
    """What the intervals of the table are."""
    return (f"[low, high]: {confidence:.0%} interval. One run: stratified bootstrap over the test images. "
            f"Several seeds: mean ± std and the Student-t interval over the seeds. Accuracy at val threshold: "
            f"at the threshold chosen on val, applied unchanged to test; TPR / FPR at val op: at the threshold "
            f"chosen on val's real images alone for the FPR of the header (eval.operating_point), applied "
            f"unchanged to test; AUROC, AP and TPR at 5% FPR do not "
            f"depend on a threshold; ECE → calibrated: before and after the calibrator fitted on val. "
            f"Paired tests: task=compare.")


def report_metrics(table: dict[str, dict[str, tuple[float, float, int]]], columns: list[str],
                   n_runs: dict[str, int]):
    """The report's numbers as MLflow metrics: ``report/<model>/<metric>`` (the mean) and ``report/<model>/runs``."""
    from mlflow.entities import Metric

    from experiments.evaluation.metrics import sanitize_metric_component

    now = int(time.time() * 1000)
    out = []
    for model, cols in table.items():
        prefix = f"report/{sanitize_metric_component(model)}"
        out.append(Metric(f"{prefix}/runs", float(n_runs[model]), now, 0))
        out += [Metric(f"{prefix}/{c}", cols[c][0], now, 0) for c in columns if not math.isnan(cols[c][0])]
    return out


def print_runs(console: Console, rows: list[RunRow]) -> None:
    """The runs behind the report: id, model, seed and run folder (pass either on to evaluate or detect).

    A table when it fits the console; else one line per run, never cut or folded, so an id or a folder can be
    copied whole."""
    table = Table(title="runs compared")
    for header in ("run id", "model", "seed", "folder"):
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(row.run_id, row.model, row.seed, row.folder)
    if natural_width(table) <= console.width:
        console.print(table)
        return
    console.print("runs compared (run id, model, seed, folder):")
    for row in rows:
        console.print(f"  {row.run_id}  {row.model}  seed {row.seed}  {row.folder}", soft_wrap=True)
