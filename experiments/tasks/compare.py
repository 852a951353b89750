"""``task=compare``: are the differences between the detectors of an experiment significant?

For the newest finished training run of each detector in ``task.experiment_name``, reads the per-image test
predictions (``predictions_test.csv``), matches the images by content hash (by relative path for runs written
before the hash column, saying so; refusing when the runs were not scored on identical images), so runs made on
other mounts or machines compare, and tests every pair of detectors:

* ΔAUROC with DeLong's test (DeLong, DeLong & Clarke-Pearson, 1988): p-value and interval of the difference;
* McNemar's test (McNemar, 1947) of the errors, each detector at its own val-chosen threshold
  (the run's ``threshold/val_calibrated``).

Each family of p-values is Holm-adjusted (Holm, 1979). Prints the detector x detector matrices, writes a
CSV and heatmaps under ``paths.report_dir/compare/<experiment>/`` and logs them to the MLflow experiment
``task.output_experiment`` (``compare-<experiment>``), not to the training experiment. ``parent=<run id>`` compares
the detectors of that sweep only (the children of its parent run, in its experiment).
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Run
from omegaconf import DictConfig, open_dict
from rich.console import Console

from experiments.evaluation.comparison import (
    DetectorScores,
    PairResult,
    align,
    matrix,
    pairing_keys,
    pairwise_tests,
    read_prediction_file,
)
from experiments.evaluation.console_tables import print_fitted
from experiments.evaluation.curves import plot_heatmap
from experiments.evaluation.metrics import sanitize_metric_component
from experiments.runs import finished_training_runs, newest_per_key, sweep_experiment, tag
from experiments.safe_paths import inside, plain_name
from experiments.tracking import create_run, end_run, mlflow_client, resolve_tracking_uri

log = logging.getLogger(__name__)

#: Artifact of every training run with its per-image test scores.
PREDICTIONS_ARTIFACT = "predictions_test.csv"
#: Logged metric holding a run's val-chosen threshold.
THRESHOLD_METRIC = "threshold/val_calibrated"


class NotEnoughDetectors(LookupError):
    """Fewer than two detectors of the experiment have per-image test predictions."""


def compare(cfg: DictConfig) -> dict:
    """Run ``task=compare``; returns the detectors, the pair results, the written files and the MLflow run id."""
    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = cfg.get("parent")
    if parent:  # a sweep's detectors: its experiment, its children
        with open_dict(cfg):
            cfg.task.experiment_name = sweep_experiment(client, parent)
    experiment = str(cfg.task.experiment_name)
    alpha = float(cfg.task.alpha)
    confidence = float(cfg.stats.confidence)
    detectors = load_detectors(client, experiment, parent)
    names = [d.name for d in detectors]
    _, labels, probs = align(detectors)
    results = pairwise_tests(names, labels, probs, [d.threshold for d in detectors], confidence)

    out_dir = inside(cfg.paths.report_dir, "compare", plain_name(experiment, "task.experiment_name"))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_outputs(out_dir, names, results, experiment, len(labels))
    run_id = log_comparison(cfg, str(cfg.task.output_experiment), experiment, detectors, results, files)
    print_comparison(experiment, names, results, len(labels), alpha, confidence)
    Console().print(f"comparison written to {', '.join(str(p) for p in files)}; MLflow experiment "
                    f"'{cfg.task.output_experiment}', run {run_id}", soft_wrap=True)
    return {"detectors": detectors, "results": results, "files": files, "run_id": run_id, "n_images": len(labels)}


# -- reading the runs ----------------------------------------------------------------------------------------
def load_detectors(client: mlflow.MlflowClient, experiment: str, parent: str | None = None) -> list[DetectorScores]:
    """The per-image test scores of the newest finished training run of each model (by tag ``model``), among
    the children of the sweep ``parent`` when it is given.

    Runs without ``predictions_test.csv`` (trained before it was written) are left out with a warning;
    raises :class:`NotEnoughDetectors` when fewer than two remain.
    """
    runs = newest_per_key(finished_training_runs(client, experiment, parent=parent),
                          lambda r: tag(r, "model", "") or None)
    found, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in sorted(runs, key=lambda r: tag(r, "model")):
            local = _download_predictions(client, run, Path(tmp))
            if local is None:
                skipped.append(f"{tag(run, 'model')} (run {run.info.run_id})")
                continue
            found.append((run, read_prediction_file(local)))
    keys, kind = pairing_keys([f for _, f in found])
    if found and kind != "hash":
        log.warning("task=compare: images paired by %s: some runs predate the content-hash column of %s, so runs "
                    "made on different mounts may not pair; retrain them to pair by content",
                    "relative path" if kind == "relpath" else "absolute path", PREDICTIONS_ARTIFACT)
    detectors = []
    for (run, f), key in zip(found, keys):
        threshold = float(run.data.metrics.get(THRESHOLD_METRIC, math.nan))
        if math.isnan(threshold):
            log.warning("run %s (%s) has no %s; McNemar's test is skipped for it",
                        run.info.run_id, tag(run, "model"), THRESHOLD_METRIC)
        detectors.append(DetectorScores(tag(run, "model"), run.info.run_id, key, f.label, f.prob, threshold))
    if skipped:
        log.warning("no %s in %s: retrain them to compare them", PREDICTIONS_ARTIFACT, ", ".join(skipped))
    if len(detectors) < 2:
        raise NotEnoughDetectors(
            f"task=compare needs the per-image test predictions ({PREDICTIONS_ARTIFACT}) of at least two detectors in "
            f"MLflow experiment '{experiment}'; found {[d.name for d in detectors]}"
            + (f", and runs without them: {skipped}" if skipped else "")
            + ". Train them first, e.g. `python run.py -m experiment=demo model=resnet34_localfft,radial_angular_logreg`")
    return detectors


def _download_predictions(client: mlflow.MlflowClient, run: Run, folder: Path) -> Path | None:
    if PREDICTIONS_ARTIFACT not in {a.path for a in client.list_artifacts(run.info.run_id)}:
        return None
    dst = folder / run.info.run_id
    dst.mkdir()
    return Path(client.download_artifacts(run.info.run_id, PREDICTIONS_ARTIFACT, str(dst)))


# -- outputs -------------------------------------------------------------------------------------------------
def write_outputs(out_dir: Path, names: list[str], results: list[PairResult], experiment: str,
                  n_images: int) -> list[Path]:
    """``pairs.csv`` (one row per pair, every statistic), ``delta_auc.csv`` (the matrix) and the heatmaps of
    ΔAUROC and of the Holm-adjusted DeLong p-values."""
    pairs = out_dir / "pairs.csv"
    columns = [f.name for f in fields(PairResult)]
    with pairs.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    delta = matrix(names, results, "delta_auc", antisymmetric=True)
    p_holm = matrix(names, results, "delong_p_holm")
    delta_csv = out_dir / "delta_auc.csv"
    with delta_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row - column", *names])
        for name, row in zip(names, delta):
            writer.writerow([name, *("" if math.isnan(v) else f"{v:.6f}" for v in row)])
    labels = {"xlabel": "detector (column)", "ylabel": "detector (row)"}
    bound = float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 1.0
    heat = plot_heatmap(delta, names, names, out_dir / "delta_auc.png",
                        f"{experiment}: ΔAUROC (row - column), {n_images} test images", fmt="+.3f",
                        vmin=-bound, vmax=bound, **labels)
    heat_p = plot_heatmap(p_holm, names, names, out_dir / "delong_p_holm.png",
                          f"{experiment}: DeLong p, Holm-adjusted", fmt=".3f", vmin=0.0, vmax=1.0, **labels)
    return [pairs, delta_csv, Path(heat), Path(heat_p)]


def log_comparison(cfg: DictConfig, output_experiment: str, experiment: str, detectors: list[DetectorScores],
                   results: list[PairResult], files: list[Path]) -> str:
    """One run tagged ``task=compare`` in ``output_experiment`` (:func:`~experiments.tracking.create_run`): the
    compared runs as params, every pair's statistics as metrics ``compare/<a>_vs_<b>/<statistic>``, the files as
    artifacts."""
    run_id = create_run(cfg, output_experiment, f"compare-{experiment}",
                        {"task": "compare", "source_experiment": experiment})
    client = mlflow_client(cfg.logger.tracking_uri)
    for det in detectors:
        client.log_param(run_id, f"run/{sanitize_metric_component(det.name)}", det.run)
    for r in results:
        prefix = f"compare/{sanitize_metric_component(r.a)}_vs_{sanitize_metric_component(r.b)}"
        for key in ("delta_auc", "delong_p", "delong_p_holm", "mcnemar_p", "mcnemar_p_holm"):
            value = float(getattr(r, key))
            if not math.isnan(value):
                client.log_metric(run_id, f"{prefix}/{key}", value)
    for path in files:
        client.log_artifact(run_id, str(path), "compare")
    end_run(client, run_id)
    return run_id


def _cell(delta: float, p_holm: float, alpha: float, delta_digits: int = 3) -> str:
    if math.isnan(delta) or math.isnan(p_holm):
        return "n/a"
    delta += 0.0  # no "-0.000"
    star = " *" if p_holm < alpha else ""
    return f"{delta:+.{delta_digits}f} (p={p_holm:.3g}){star}"


def print_comparison(experiment: str, names: list[str], results: list[PairResult], n_images: int, alpha: float,
                     confidence: float) -> None:
    """The ΔAUROC (DeLong) and Δaccuracy (McNemar) matrices, row minus column with the Holm-adjusted p, and
    the list of differences significant at ``alpha`` after Holm's adjustment. A matrix too wide for the
    console prints one row per pair (detector, minus, value)."""
    console = Console()
    families = (
        ("ΔAUROC, DeLong", "delta_auc", "delong_p_holm"),
        ("Δaccuracy at each detector's val-chosen threshold, McNemar", "delta_acc", "mcnemar_p_holm"),
    )
    for title, value_field, p_field in families:
        values = _delta_acc_matrix(names, results) if value_field == "delta_acc" else \
            matrix(names, results, value_field, antisymmetric=True)
        p_values = matrix(names, results, p_field)
        body = [[name, *("—" if i == j else _cell(values[i, j], p_values[i, j], alpha) for j in range(len(names)))]
                for i, name in enumerate(names)]
        print_fitted(console, f"{experiment}: {title} (row - column, Holm-adjusted p; * p < {alpha}), "
                              f"{n_images} paired test images", ["detector", *names], body, column_label="minus")
    for line in significance_lines(results, alpha, confidence):
        console.print(line, soft_wrap=True)


def _delta_acc_matrix(names: list[str], results: list[PairResult]) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    out = np.full((len(names), len(names)), math.nan)
    for r in results:
        out[index[r.a], index[r.b]] = r.acc_a - r.acc_b
        out[index[r.b], index[r.a]] = r.acc_b - r.acc_a
    return out


def significance_lines(results: list[PairResult], alpha: float, confidence: float) -> list[str]:
    """One line per difference significant at ``alpha`` after Holm, or a line saying there is none."""
    lines = [f"Significant at {alpha} after Holm's adjustment (each family of {len(results)} pairs):"]
    for r in results:
        if r.delong_p_holm < alpha:
            better, worse = (r.a, r.b) if r.delta_auc > 0 else (r.b, r.a)
            lines.append(f"  AUROC: {better} > {worse}, ΔAUROC {abs(r.delta_auc):.3f} "
                         f"({confidence:.0%} CI of {r.a} - {r.b}: [{r.delta_auc_low:+.3f}, {r.delta_auc_high:+.3f}]), "
                         f"DeLong p = {r.delong_p_holm:.3g}")
        if r.mcnemar_p_holm < alpha:
            better, worse = (r.a, r.b) if r.acc_a > r.acc_b else (r.b, r.a)
            lines.append(f"  accuracy: {better} > {worse} ({max(r.acc_a, r.acc_b):.3f} vs {min(r.acc_a, r.acc_b):.3f}, "
                         f"{r.b_only} vs {r.c_only} discordant images), McNemar p = {r.mcnemar_p_holm:.3g}")
    if len(lines) == 1:
        lines.append("  none: no pair of detectors differs significantly on these test images")
    return lines
