"""Real sources: which kind of real photo a detector flags at its operating point.

A deployed detector answers to the false-positive rate it has on each kind of real image it meets (a camera, a
phone's night mode, a retouching app, a photo collection). A real image's source is a manifest's ``source``
column, or in a folder layout the generator folder it was found in
(:func:`~experiments.data.layouts.base.real_source`). At the run's operating point (the threshold chosen on the
val split's reals, :mod:`experiments.evaluation.operating_point`) this module reports:

* the test FPR of each source, with the stratified bootstrap interval of
  :mod:`experiments.evaluation.bootstrap` (the reals of a source resampled; Efron & Tibshirani, 1993, ch. 13),
  as ``test/source/<source>/fpr_at_op`` and ``_ci_low`` / ``_ci_high``;
* the source x generator AUROC matrix: each cell the AUROC of one source's reals against one generator's fakes
  (the per-subset evaluation of real-image domains in Cozzolino et al., "Raising the Bar of AI-generated Image
  Detection with CLIP", CVPRW 2024), as a CSV and a heatmap;
* the source with the highest FPR, which the console and ``task=report`` name.

Conventions as :mod:`experiments.evaluation.operating_point`: scores are P(synthetic), real = 0, synthetic = 1,
flagged synthetic when ``score >= threshold``. Everything above :func:`write_real_sources` is pure.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.data.layouts import real_source
from experiments.evaluation.curves import plot_heatmap
from experiments.evaluation.deployment import fpr_at_threshold_by_group
from experiments.evaluation.generator_matrix import build_matrix, write_matrix_csv
from experiments.evaluation.metrics import sanitize_metric_component
from experiments.evaluation.predictions import BootstrapSettings, Predictions
from experiments.evaluation.score_counts import (
    CountMetric,
    ScoreCounts,
    auroc_from_counts,
    confusion_from_counts,
)

log = logging.getLogger(__name__)

#: prefix of the per-source metrics: ``test/source/<source>/fpr_at_op``
SOURCE_PREFIX = "test/source"
FPR_AT_OP = "fpr_at_op"
#: artifact folder (in the run folder and in MLflow) of the CSVs and the heatmap
ARTIFACT_DIR = "real_sources"
_SOURCE_KEY = re.compile(rf"^{re.escape(SOURCE_PREFIX)}/([^/]+)/{FPR_AT_OP}$")


@dataclass(frozen=True)
class SourceRate:
    """The test FPR of one real source at the operating point, its bootstrap interval and its number of reals."""

    source: str
    fpr: float
    ci_low: float
    ci_high: float
    n_real: int


def _arrays(scores: Any, labels: Any, *groups: Any) -> tuple[np.ndarray, ...]:
    out = (np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(np.int64),
           *(np.asarray(g, dtype=object).ravel().astype(str) for g in groups))
    if len({a.size for a in out}) > 1:
        raise ValueError(f"scores, labels and groups differ in length: {[a.size for a in out]}")
    return out


def source_fprs(scores: Any, labels: Any, sources: Any, threshold: float,
                bootstrap: BootstrapSettings | None = None) -> list[SourceRate]:
    """The test FPR at ``threshold`` of the reals of each source (sorted by name; fakes and an empty source are
    left out), with the stratified bootstrap's percentile interval at ``bootstrap.confidence`` (NaN without
    ``bootstrap`` or with 0 resamples): :func:`~experiments.evaluation.deployment.fpr_at_threshold_by_group`."""
    scores, labels, sources = _arrays(scores, labels, sources)
    keep = (labels == 0) & (sources != "")
    by_source = fpr_at_threshold_by_group(scores[keep], labels[keep], sources[keep], threshold, bootstrap)
    counts = dict(zip(*np.unique(sources[keep], return_counts=True)))
    return [SourceRate(name, rates["fpr_at_op"], rates.get("fpr_at_op_ci_low", math.nan),
                       rates.get("fpr_at_op_ci_high", math.nan), int(counts[name]))
            for name, rates in sorted(by_source.items())]


def source_generator_auroc(scores: Any, labels: Any, sources: Any, generators: Any
                           ) -> tuple[np.ndarray, list[str], list[str]]:
    """The source x generator AUROC matrix: cell ``[i, j]`` is the AUROC of the reals of ``rows[i]`` against the
    fakes of ``cols[j]`` (:func:`~experiments.evaluation.generator_matrix.build_matrix`'s order: the generators
    named as a source first, so a paired folder sits on the diagonal). ``generators`` are read for fakes only."""
    scores, labels, sources, generators = _arrays(scores, labels, sources, generators)
    real = (labels == 0) & (sources != "")
    records = []
    for source in sorted(set(sources[real].tolist())):
        reals = scores[real & (sources == source)]
        for generator in sorted(set(generators[labels == 1].tolist())):
            fakes = scores[(labels == 1) & (generators == generator)]
            both = np.concatenate([reals, fakes])
            target = np.concatenate([np.zeros(reals.size, np.int64), np.ones(fakes.size, np.int64)])
            records.append({"train": source, "test": generator,
                            "auc": float(auroc_from_counts(ScoreCounts.from_scores(both, target))[0])})
    if not records:
        return np.zeros((0, 0)), [], []
    return build_matrix(records, "auc")


def worst_source(rates: Sequence[SourceRate]) -> SourceRate | None:
    """The source with the highest FPR (the first by name among equals); None when no FPR is finite."""
    finite = [r for r in rates if math.isfinite(r.fpr)]
    return max(sorted(finite, key=lambda r: r.source), key=lambda r: r.fpr) if finite else None


def source_metrics(rates: Sequence[SourceRate]) -> dict[str, float]:
    """``test/source/<source>/fpr_at_op`` and its ``_ci_low`` / ``_ci_high`` (sources named as metric names
    allow, :func:`~experiments.evaluation.metrics.sanitize_metric_component`)."""
    out: dict[str, float] = {}
    for rate in rates:
        key = f"{SOURCE_PREFIX}/{sanitize_metric_component(rate.source)}/{FPR_AT_OP}"
        out.update({key: rate.fpr, f"{key}_ci_low": rate.ci_low, f"{key}_ci_high": rate.ci_high})
    return out


def rates_from_metrics(metrics: Mapping[str, float]) -> list[SourceRate]:
    """The per-source rates a run logged (:func:`source_metrics`), read back from its metrics (``n_real`` 0)."""
    rates = []
    for key, value in sorted(metrics.items()):
        match = _SOURCE_KEY.match(key)
        if match:
            rates.append(SourceRate(match.group(1), float(value), float(metrics.get(f"{key}_ci_low", math.nan)),
                                    float(metrics.get(f"{key}_ci_high", math.nan)), 0))
    return rates


def worst_source_text(rate: SourceRate | None) -> str:
    """``"night_mode: FPR 0.210 [0.150, 0.280]"``, or ``"n/a"``."""
    if rate is None:
        return "n/a"
    interval = f" [{rate.ci_low:.3f}, {rate.ci_high:.3f}]" if math.isfinite(rate.ci_low) else ""
    return f"{rate.source}: FPR {rate.fpr:.3f}{interval}"


@dataclass(frozen=True)
class RealSourceReport:
    """The per-source rates and the source x generator matrix of one test split at ``threshold``."""

    threshold: float
    rates: list[SourceRate]
    matrix: np.ndarray
    rows: list[str]
    cols: list[str]

    @property
    def worst(self) -> SourceRate | None:
        return worst_source(self.rates)

    def metrics(self) -> dict[str, float]:
        return source_metrics(self.rates)


def real_source_report(test: Predictions, test_samples: Sequence[Any], threshold: float,
                       bootstrap: BootstrapSettings | None = None) -> RealSourceReport:
    """:func:`source_fprs` and :func:`source_generator_auroc` of ``test``, whose ``index`` points into
    ``test_samples`` (``datamodule.splits["test"]``), each sample's source by
    :func:`~experiments.data.layouts.base.real_source`."""
    outside = [int(i) for i in test.index if not 0 <= i < len(test_samples)]
    if outside:
        raise IndexError(f"prediction index {outside[0]} is outside the split's {len(test_samples)} samples")
    sources = [real_source(test_samples[int(i)]) for i in test.index]
    names = test.generator_names
    generators = [names[g] if 0 <= g < len(names) else str(g) for g in test.generator.tolist()]
    matrix, rows, cols = source_generator_auroc(test.prob, test.label, sources, generators)
    return RealSourceReport(float(threshold), source_fprs(test.prob, test.label, sources, threshold, bootstrap),
                            matrix, rows, cols)


# -- files and logging -------------------------------------------------------------------------------------------
def write_real_sources(report: RealSourceReport, out_dir: str | Path, title: str = "") -> list[Path]:
    """``source_fpr.csv`` (source, n_real, threshold, fpr_at_op and its interval), ``source_generator_auc.csv``
    and its heatmap ``source_generator_auc.png`` under ``out_dir``; the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rates_csv = out / "source_fpr.csv"
    with rates_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "n_real", "threshold", FPR_AT_OP, f"{FPR_AT_OP}_ci_low", f"{FPR_AT_OP}_ci_high"])
        writer.writerows([r.source, r.n_real, report.threshold, r.fpr, r.ci_low, r.ci_high] for r in report.rates)
    paths = [rates_csv]
    if report.matrix.size:
        paths.append(write_matrix_csv(out / "source_generator_auc.csv", report.matrix, report.rows, report.cols,
                                      corner="source \\ generator"))
        paths.append(Path(plot_heatmap(report.matrix, report.rows, report.cols, out / "source_generator_auc.png",
                                       title or "AUROC: real source vs generator", vmin=0.0, vmax=1.0,
                                       xlabel="generator (fakes)", ylabel="real source")))
    return paths


def report_real_sources(test: Predictions, test_samples: Sequence[Any], threshold: float | None,
                        bootstrap: BootstrapSettings | None, out_dir: str | Path, logger: Any = None
                        ) -> dict[str, float]:
    """What ``task=train`` and ``task=evaluate`` call: the real-source report of ``test`` at the operating point's
    ``threshold`` (chosen on val's reals), written under ``<out_dir>/real_sources`` and logged there as artifacts
    of ``logger``'s run; returns the metrics of :func:`source_metrics` (none when ``threshold`` is None)."""
    from experiments.tracking import log_artifact

    if threshold is None or not math.isfinite(threshold):
        return {}
    report = real_source_report(test, test_samples, threshold, bootstrap)
    for path in write_real_sources(report, Path(out_dir) / ARTIFACT_DIR):
        if logger is not None:
            log_artifact(logger, path, ARTIFACT_DIR)
    return report.metrics()


def print_real_sources(metrics: Mapping[str, float], console: Any = None) -> None:
    """One console line naming the real source with the highest FPR at the operating point (nothing when the
    metrics hold no per-source rate)."""
    from rich.console import Console

    for line in worst_source_lines([("real source with the highest FPR at the operating point", metrics)]):
        (console or Console(width=160)).print(line, markup=False, soft_wrap=True)


def worst_source_lines(runs: Sequence[tuple[str, Mapping[str, float]]]) -> list[str]:
    """For ``task=report``: one line per ``(name, metrics)`` run that logged per-source rates, naming its real source
    with the highest FPR at the operating point; empty when no run did."""
    lines = []
    for name, metrics in runs:
        rates = rates_from_metrics(metrics)
        if rates:
            lines.append(f"{name}: {worst_source_text(worst_source(rates))} (of {len(rates)} real sources)")
    return lines
