"""Figures of how a detector scores: confusion matrix, reliability diagram, ROC, per-group accuracy,
run comparison bars, robustness curves and matrices (see :mod:`experiments.evaluation.plotting`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps

from experiments.data.layouts import CLASS_NAMES
from experiments.evaluation.metrics import (
    ALL_GROUPS,
    as_scores_and_labels,
    binary_metrics,
    expected_calibration_error,
    reliability_bins,
    roc_points,
)
from experiments.evaluation.plotting import is_finite, saved_figure, to_numpy
from experiments.evaluation.score_counts import ScoreCounts, confusion_from_counts

# ---------------------------------------------------------------------------
# classification diagnostics
# ---------------------------------------------------------------------------
def plot_confusion_matrix(probs: Any, labels: Any, path: str | Path, threshold: float = 0.5) -> str | Path:
    """2x2 confusion matrix at ``prob >= threshold``; each cell shows its count and its row-normalised rate."""
    scores, targets = as_scores_and_labels(probs, labels)
    tp, fp, tn, fn = (float(c[0]) for c in confusion_from_counts(ScoreCounts.from_scores(scores, targets), threshold))
    counts = np.array([[tn, fp], [fn, tp]])  # rows: true class, columns: predicted class
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(row_totals > 0, counts / row_totals, np.nan)

    with saved_figure(path, (4.6, 4.0)) as fig:
        ax = fig.add_subplot()
        image = ax.imshow(np.nan_to_num(rates), cmap="Blues", vmin=0.0, vmax=1.0)
        for t in (0, 1):
            for p in (0, 1):
                rate = "n/a" if np.isnan(rates[t, p]) else f"{100 * rates[t, p]:.1f}%"
                colour = "white" if np.nan_to_num(rates[t, p]) > 0.5 else "black"
                ax.text(p, t, f"{int(counts[t, p])}\n({rate})", ha="center", va="center", color=colour,
                        fontsize=11)
        ax.set_xticks([0, 1], labels=CLASS_NAMES)
        ax.set_yticks([0, 1], labels=CLASS_NAMES)
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        ax.set_title(f"Confusion matrix (threshold {threshold:.3g}, n={len(targets)})")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Row-normalised rate")
    return path


def plot_calibration(probs: Any, labels: Any, path: str | Path, n_bins: int = 15, probs_calibrated: Any = None,
                     calibrated_label: str = "calibrated") -> str | Path:
    """Reliability diagram of P(synthetic) with the identity diagonal, above a histogram of the scores.

    Bars show the fraction of synthetic samples per equal-width bin (see
    :func:`experiments.evaluation.metrics.reliability_bins`); the ECE in the title uses the same bins.
    With ``probs_calibrated`` (the same samples after a post-hoc calibrator) a second column shows them,
    titled ``calibrated_label``: before on the left, after on the right.
    """
    panels = [("before calibration" if probs_calibrated is not None else "", probs)]
    if probs_calibrated is not None:
        panels.append((f"after: {calibrated_label}", probs_calibrated))
    with saved_figure(path, (5.0 * len(panels), 6.0)) as fig:
        axes = fig.subplots(2, len(panels), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
        for column, (name, scores) in enumerate(panels):
            _reliability_panel(axes[0, column], axes[1, column], scores, labels, n_bins, name)
    return path


def _reliability_panel(top, bottom, probs: Any, labels: Any, n_bins: int, name: str) -> None:
    bins = reliability_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    edges = bins["edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = bins["count"] > 0
    top.bar(centres[filled], bins["frac_pos"][filled], width=width, edgecolor="black", color="tab:blue",
            alpha=0.8, label="Observed fraction synthetic")
    top.plot(centres[filled], bins["mean_prob"][filled], "o", color="tab:orange", markersize=4,
             label="Mean predicted probability")
    top.plot([0, 1], [0, 1], "--", color="gray", label="Perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Fraction synthetic")
    title = f"Reliability diagram (ECE = {ece:.3f}, {n_bins} bins)"
    top.set_title(f"{title}\n{name}" if name else title, fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, bins["count"], width=width, edgecolor="black", color="tab:gray")
    bottom.set_xlabel("Predicted P(synthetic)")
    bottom.set_ylabel("Count")


def plot_roc(curves: Mapping[str, tuple[Any, Any]], path: str | Path) -> str | Path:
    """One ROC curve per entry ``name -> (probs, labels)``, with its AUROC in the legend.

    Entries with one class only cannot form a curve and are listed in the legend as such.
    """
    with saved_figure(path, (5.2, 5.0)) as fig:
        ax = fig.add_subplot()
        for name, (probs, labels) in curves.items():
            scores, targets = as_scores_and_labels(probs, labels)
            auc = binary_metrics(scores, targets)["auc"]
            if not is_finite(auc):
                ax.plot([], [], " ", label=f"{name} (one class only)")
                continue
            fpr, tpr, _ = roc_points(scores, targets)
            ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUROC = {auc:.3f})")
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="Chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("False positive rate (real called synthetic)")
        ax.set_ylabel("True positive rate (synthetic detected)")
        ax.set_title("ROC curves")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    return path


def plot_per_group_accuracy(
    metrics_by_group_dict: Mapping[str, Mapping[str, float]], path: str | Path, metric: str = "accuracy"
) -> str | Path:
    """Bar per group (e.g. generator) of ``metric``; the pooled ``"all"`` value is a dashed line.

    Groups whose value is NaN get no bar and an "n/a" mark.
    """
    names = [name for name in metrics_by_group_dict if name != ALL_GROUPS]
    values = [float(metrics_by_group_dict[name].get(metric, float("nan"))) for name in names]
    with saved_figure(path, (max(4.5, 0.8 * len(names) + 2), 4.2)) as fig:
        ax = fig.add_subplot()
        positions = np.arange(len(names))
        for position, value in zip(positions, values):
            if is_finite(value):
                ax.bar(position, value, color="tab:blue", edgecolor="black")
            ax.annotate(f"{value:.3f}" if is_finite(value) else "n/a", (position, value if is_finite(value) else 0.0),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        pooled = metrics_by_group_dict.get(ALL_GROUPS, {}).get(metric)
        if is_finite(pooled):
            ax.axhline(float(pooled), linestyle="--", color="tab:red", label=f"all = {float(pooled):.3f}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xticks(positions, labels=names, rotation=30, ha="right", rotation_mode="anchor")
        finite = [v for v in values + [pooled] if is_finite(v)]
        ax.set_ylim(0, max(1.0, max(finite, default=1.0)) * 1.15)
        ax.set_xlabel("Group")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per group")
    return path


# ---------------------------------------------------------------------------
# spectral analysis
# ---------------------------------------------------------------------------
def plot_bar_comparison(table: Mapping[str, Mapping[str, float]], metrics: Sequence[str], path: str | Path) -> str | Path:
    """Grouped bars: one group per model (``table`` key), one bar per metric; NaN or missing values are skipped."""
    models = list(table)
    width = 0.8 / max(len(metrics), 1)
    palette = colormaps["tab10"]
    with saved_figure(path, (max(5.0, 0.6 * len(models) * max(1, len(metrics)) + 2), 4.5)) as fig:
        ax = fig.add_subplot()
        positions = np.arange(len(models))
        for index, metric in enumerate(metrics):
            offset = (index - (len(metrics) - 1) / 2) * width
            xs, heights = [], []
            for position, model in zip(positions, models):
                value = table[model].get(metric, float("nan"))
                if is_finite(value):
                    xs.append(position + offset)
                    heights.append(float(value))
            bars = ax.bar(xs, heights, width=width, color=palette(index % palette.N), edgecolor="black",
                          label=metric)
            for bar, value in zip(bars, heights):
                ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(positions, labels=models, rotation=20, ha="right", rotation_mode="anchor")
        ax.set_ylabel("value")
        ax.set_xlabel("model")
        ax.set_title("Detector comparison")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="metric")
        ax.grid(axis="y", alpha=0.3)
    return path


def plot_robustness_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str = "AUROC",
    title: str | None = None,
) -> str | Path:
    """One line per model through its ``(strength, value)`` points, sorted by strength; NaN points are skipped."""
    with saved_figure(path, (5.5, 4.2)) as fig:
        ax = fig.add_subplot()
        for name, points in curves.items():
            finite = sorted((float(x), float(y)) for x, y in points if is_finite(x) and is_finite(y))
            if finite:
                xs, ys = zip(*finite)
                ax.plot(xs, ys, marker="o", linewidth=1.6, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title or f"{ylabel} versus {xlabel}")
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=8, loc="best")
    return path


def plot_severity_curves(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    levels: Sequence[str],
    path: str | Path,
    title: str,
    xlabel: str = "severity level",
) -> str | Path:
    """One panel per metric (``{ylabel: {model: one value per level}}``), side by side: x = the named ``levels``
    at their positions (mildest first), one line per model; NaN points are skipped."""
    with saved_figure(path, (4.6 * max(1, len(panels)), 4.2)) as fig:
        axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
        for ax, (ylabel, curves) in zip(axes, panels.items()):
            for name, values in curves.items():
                finite = [(i, float(v)) for i, v in enumerate(values) if is_finite(v)]
                if finite:
                    xs, ys = zip(*finite)
                    ax.plot(xs, ys, marker="o", linewidth=1.6, label=name)
            ax.set_xticks(range(len(levels)), labels=list(levels), rotation=30, ha="right")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if curves:
                ax.legend(fontsize=8, loc="best")
        fig.suptitle(title)
    return path


def plot_heatmap(
    matrix: Any,
    row_names: Sequence[str],
    col_names: Sequence[str],
    path: str | Path,
    title: str,
    fmt: str = ".2f",
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "test generator",
    ylabel: str = "train generator",
) -> str | Path:
    """Annotated heatmap, e.g. the cross-generator matrix (rows: trained on, columns: tested on).

    NaN cells are shown blank with "n/a".
    """
    values = to_numpy(matrix).astype(np.float64)
    if values.shape != (len(row_names), len(col_names)):
        raise ValueError(f"matrix shape {values.shape} does not match {len(row_names)} x {len(col_names)} names")
    finite = values[np.isfinite(values)]
    low = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    high = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    cmap = colormaps["viridis"].with_extremes(bad="lightgray")
    with saved_figure(path, (1.0 * len(col_names) + 3, 0.8 * len(row_names) + 2)) as fig:
        ax = fig.add_subplot()
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=high if high > low else low + 1)
        midpoint = (low + high) / 2
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                value = values[i, j]
                text = format(value, fmt) if np.isfinite(value) else "n/a"
                colour = "black" if np.isfinite(value) and value > midpoint else "white"
                colour = "black" if not np.isfinite(value) else colour
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
        ax.set_xticks(np.arange(len(col_names)), labels=list(col_names), rotation=30, ha="right",
                      rotation_mode="anchor")
        ax.set_yticks(np.arange(len(row_names)), labels=list(row_names))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return path
