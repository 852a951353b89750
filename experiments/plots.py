"""Diagnostic figures for detector evaluation, written as PNG files.

Every function draws on a fresh :class:`matplotlib.figure.Figure` that is never
registered with ``pyplot``, so nothing leaks into global figure state; the figure is
saved to ``path`` (parent folders are created), cleared, and ``path`` is returned.
Inputs may be numpy arrays or torch tensors. Labels: real = 0, synthetic = 1.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from experiments.metrics import (  # noqa: E402
    ALL_GROUPS,
    as_scores_and_labels,
    binary_metrics,
    expected_calibration_error,
    reliability_bins,
    roc_points,
)

CLASS_NAMES = ("real", "synthetic")
DPI = 100


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


@contextlib.contextmanager
def _saved_figure(path: str | Path, figsize: tuple[float, float], **kwargs: Any) -> Iterator[Figure]:
    """Yield a pyplot-free figure; on exit save it to ``path`` and release it."""
    fig = Figure(figsize=figsize, dpi=DPI, **kwargs)
    try:
        yield fig
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------
# classification diagnostics
# ---------------------------------------------------------------------------
def plot_confusion_matrix(probs: Any, labels: Any, path: str | Path, threshold: float = 0.5) -> str | Path:
    """2x2 confusion matrix at ``prob >= threshold``; each cell shows its count and its row-normalised rate."""
    scores, targets = as_scores_and_labels(probs, labels)
    y_true = targets.numpy()
    y_pred = (scores.numpy() >= threshold).astype(int)
    counts = np.array([[np.sum((y_true == t) & (y_pred == p)) for p in (0, 1)] for t in (0, 1)], dtype=float)
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(row_totals > 0, counts / row_totals, np.nan)

    with _saved_figure(path, (4.6, 4.0)) as fig:
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
        ax.set_title(f"Confusion matrix (threshold {threshold:.3g}, n={len(y_true)})")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Row-normalised rate")
    return path


def plot_calibration(probs: Any, labels: Any, path: str | Path, n_bins: int = 15) -> str | Path:
    """Reliability diagram of P(synthetic) with the identity diagonal, above a histogram of the scores.

    Bars show the fraction of synthetic samples per equal-width bin (see
    :func:`experiments.metrics.reliability_bins`); the ECE in the title uses the same bins.
    """
    bins = reliability_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    edges = bins["edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = bins["count"] > 0

    with _saved_figure(path, (5.0, 6.0)) as fig:
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        top.bar(centres[filled], bins["frac_pos"][filled], width=width, edgecolor="black", color="tab:blue",
                alpha=0.8, label="Observed fraction synthetic")
        top.plot(centres[filled], bins["mean_prob"][filled], "o", color="tab:orange", markersize=4,
                 label="Mean predicted probability")
        top.plot([0, 1], [0, 1], "--", color="gray", label="Perfect calibration")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("Fraction synthetic")
        top.set_title(f"Reliability diagram (ECE = {ece:.3f}, {n_bins} bins)")
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(centres, bins["count"], width=width, edgecolor="black", color="tab:gray")
        bottom.set_xlabel("Predicted P(synthetic)")
        bottom.set_ylabel("Count")
    return path


def plot_roc(curves: Mapping[str, tuple[Any, Any]], path: str | Path) -> str | Path:
    """One ROC curve per entry ``name -> (probs, labels)``, with its AUROC in the legend.

    Entries with one class only cannot form a curve and are listed in the legend as such.
    """
    with _saved_figure(path, (5.2, 5.0)) as fig:
        ax = fig.add_subplot()
        for name, (probs, labels) in curves.items():
            scores, targets = as_scores_and_labels(probs, labels)
            auc = binary_metrics(scores, targets)["auc"]
            if not _finite(auc):
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
    with _saved_figure(path, (max(4.5, 0.8 * len(names) + 2), 4.2)) as fig:
        ax = fig.add_subplot()
        positions = np.arange(len(names))
        for position, value in zip(positions, values):
            if _finite(value):
                ax.bar(position, value, color="tab:blue", edgecolor="black")
            ax.annotate(f"{value:.3f}" if _finite(value) else "n/a", (position, value if _finite(value) else 0.0),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        pooled = metrics_by_group_dict.get(ALL_GROUPS, {}).get(metric)
        if _finite(pooled):
            ax.axhline(float(pooled), linestyle="--", color="tab:red", label=f"all = {float(pooled):.3f}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xticks(positions, labels=names, rotation=30, ha="right", rotation_mode="anchor")
        finite = [v for v in values + [pooled] if _finite(v)]
        ax.set_ylim(0, max(1.0, max(finite, default=1.0)) * 1.15)
        ax.set_xlabel("Group")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per group")
    return path


# ---------------------------------------------------------------------------
# spectral analysis
# ---------------------------------------------------------------------------
def _robust_limits(image: np.ndarray, exclude_centre: bool = False) -> tuple[float, float]:
    values = image.astype(np.float64)
    if exclude_centre:
        mask = np.ones_like(values, dtype=bool)
        mask[values.shape[0] // 2, values.shape[1] // 2] = False
        values = values[mask]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1, 99])
    return (float(low), float(high)) if high > low else (float(low), float(low) + 1e-12)


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape
    size_y, size_x = min(size, height), min(size, width)
    top = height // 2 - size_y // 2
    left = width // 2 - size_x // 2
    return image[top:top + size_y, left:left + size_x]


def plot_spectral_analysis(
    stats: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    log_power: bool = True,
    autocorr_crop: int = 32,
    angular_range_deg: float = 180.0,
) -> str | Path:
    """Fingerprint figure in the style of Corvi et al. (2023), "Intriguing properties of synthetic images".

    One row per key of ``stats`` (a class or a generator); columns: the mean power
    spectrum of the noise residual (centred, shown as ``log10`` unless ``log_power`` is
    False because it already is), the mean autocorrelation (central ``autocorr_crop``
    pixels, zero lag in the middle), the radial profile (radius normalised so that
    Nyquist = 1) and the angular profile (bins spanning ``angular_range_deg``).
    ``stats[key]`` holds ``power_spectrum`` (H, W), ``autocorrelation`` (H, W),
    ``radial`` (R,) and ``angular`` (A,). Colour limits are robust percentiles, with
    the zero-lag peak of the autocorrelation left out.
    """
    keys = list(stats)
    if not keys:
        raise ValueError("plot_spectral_analysis needs at least one entry in stats")
    with _saved_figure(path, (13.0, 3.0 * len(keys)), layout="constrained") as fig:
        axes = fig.subplots(len(keys), 4, squeeze=False)
        for row, key in enumerate(keys):
            entry = stats[key]
            power = _to_numpy(entry["power_spectrum"]).astype(np.float64)
            if log_power:
                power = np.log10(np.maximum(power, 0.0) + 1e-12)
            autocorr = _centre_crop(_to_numpy(entry["autocorrelation"]).astype(np.float64), autocorr_crop)
            radial = _to_numpy(entry["radial"]).astype(np.float64).reshape(-1)
            angular = _to_numpy(entry["angular"]).astype(np.float64).reshape(-1)

            ax_power, ax_acf, ax_radial, ax_angular = axes[row]
            low, high = _robust_limits(power)
            image = ax_power.imshow(power, cmap="magma", vmin=low, vmax=high)
            fig.colorbar(image, ax=ax_power, fraction=0.046)
            ax_power.set_title(f"{key}: mean {'log10 ' if log_power else ''}power spectrum", fontsize=9)
            ax_power.set_axis_off()

            low, high = _robust_limits(autocorr, exclude_centre=True)
            half_y, half_x = autocorr.shape[0] // 2, autocorr.shape[1] // 2
            extent = (-half_x - 0.5, autocorr.shape[1] - half_x - 0.5, autocorr.shape[0] - half_y - 0.5,
                      -half_y - 0.5)
            image = ax_acf.imshow(autocorr, cmap="coolwarm", vmin=low, vmax=high, extent=extent)
            fig.colorbar(image, ax=ax_acf, fraction=0.046)
            ax_acf.set_title(f"{key}: mean autocorrelation", fontsize=9)
            ax_acf.set_xlabel("lag x (px)")
            ax_acf.set_ylabel("lag y (px)")

            radius = (np.arange(radial.size) + 0.5) / max(radial.size, 1)
            ax_radial.plot(radius, radial, color="tab:blue")
            ax_radial.set_title(f"{key}: radial profile", fontsize=9)
            ax_radial.set_xlabel("normalised frequency (Nyquist = 1)")
            ax_radial.set_ylabel("energy")
            ax_radial.grid(alpha=0.3)

            angle = (np.arange(angular.size) + 0.5) * angular_range_deg / max(angular.size, 1)
            ax_angular.plot(angle, angular, color="tab:green")
            ax_angular.set_title(f"{key}: angular profile", fontsize=9)
            ax_angular.set_xlabel("angle (degrees)")
            ax_angular.set_ylabel("energy")
            ax_angular.grid(alpha=0.3)
    return path


# ---------------------------------------------------------------------------
# embeddings and saliency
# ---------------------------------------------------------------------------
def _scatter_by_category(ax: Any, points: np.ndarray, categories: np.ndarray, names: Mapping[int, str]) -> None:
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    for index, (value, name) in enumerate(names.items()):
        mask = categories == value
        ax.scatter(points[mask, 0], points[mask, 1], s=28, color=palette(index % palette.N), label=name,
                   alpha=0.8, edgecolors="none")
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")


def plot_tsne(
    features: Any,
    labels: Any,
    groups: Any,
    path: str | Path,
    group_names: Mapping[int, str] | Sequence[str] | None = None,
    seed: int = 0,
) -> str | Path:
    """2-D t-SNE (van der Maaten & Hinton, 2008) of ``features`` (N, D), coloured by label and by group.

    Uses scikit-learn's ``TSNE`` with PCA initialisation (random when D < 2) and
    perplexity ``min(30, (N - 1) / 3)``, which stays below N as scikit-learn requires.
    """
    from sklearn.manifold import TSNE

    feats = _to_numpy(features).astype(np.float64).reshape(len(features), -1)
    label_array = _to_numpy(labels).astype(int).reshape(-1)
    group_array = _to_numpy(groups).astype(int).reshape(-1)
    n = feats.shape[0]
    if n < 4:
        raise ValueError(f"plot_tsne needs at least 4 samples, got {n}")
    if not len(label_array) == len(group_array) == n:
        raise ValueError("features, labels and groups must have the same length")
    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3.0),
                init="pca" if feats.shape[1] >= 2 else "random", random_state=seed)
    points = tsne.fit_transform(feats)

    label_names = {value: CLASS_NAMES[value] if value in (0, 1) else str(value) for value in np.unique(label_array)}
    group_ids = [int(value) for value in np.unique(group_array)]
    if isinstance(group_names, Mapping):
        names = {g: str(group_names.get(g, g)) for g in group_ids}
    elif group_names is not None:
        names = {g: str(group_names[g]) if 0 <= g < len(group_names) else str(g) for g in group_ids}
    else:
        names = {g: str(g) for g in group_ids}

    with _saved_figure(path, (11.0, 5.0)) as fig:
        ax_label, ax_group = fig.subplots(1, 2)
        _scatter_by_category(ax_label, points, label_array, label_names)
        ax_label.set_title("t-SNE coloured by label")
        _scatter_by_category(ax_group, points, group_array, names)
        ax_group.set_title("t-SNE coloured by generator")
        fig.suptitle(f"t-SNE of detector features (N={n}, D={feats.shape[1]})")
    return path


def plot_gradcam_grid(
    images: Any,
    cams: Mapping[str, Any],
    path: str | Path,
    titles: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> str | Path:
    """Grid of class-activation maps: one row per image, the input then one overlay per CAM name.

    ``images`` is (N, 3, H, W) in [0, 1]; each ``cams[name]`` is (N, H, W) in [0, 1]
    (computed elsewhere, e.g. Grad-CAM, Selvaraju et al., 2017). Overlays blend the
    ``jet`` colour map with weight ``alpha``. ``titles`` labels the rows.
    """
    image_array = np.clip(_to_numpy(images).astype(np.float64), 0.0, 1.0)
    if image_array.ndim != 4 or image_array.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 3, H, W), got shape {image_array.shape}")
    image_array = np.repeat(image_array, 3, axis=1) if image_array.shape[1] == 1 else image_array
    rgb = image_array.transpose(0, 2, 3, 1)
    n = rgb.shape[0]
    cam_arrays = {name: np.clip(_to_numpy(cam).astype(np.float64).reshape(n, *rgb.shape[1:3]), 0.0, 1.0)
                  for name, cam in cams.items()}
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    jet = colormaps["jet"]
    columns = 1 + len(cam_arrays)
    with _saved_figure(path, (2.4 * columns, 2.4 * n), layout="constrained") as fig:
        axes = fig.subplots(n, columns, squeeze=False)
        for row in range(n):
            axes[row, 0].imshow(rgb[row])
            axes[row, 0].set_title(titles[row] if titles is not None else "input", fontsize=9)
            for col, (name, cam) in enumerate(cam_arrays.items(), start=1):
                overlay = (1 - alpha) * rgb[row] + alpha * jet(cam[row])[..., :3]
                axes[row, col].imshow(np.clip(overlay, 0.0, 1.0))
                axes[row, col].set_title(name, fontsize=9)
            for ax in axes[row]:
                ax.set_axis_off()
    return path


# ---------------------------------------------------------------------------
# comparisons across models
# ---------------------------------------------------------------------------
def plot_bar_comparison(table: Mapping[str, Mapping[str, float]], metrics: Sequence[str], path: str | Path) -> str | Path:
    """Grouped bars: one group per model (``table`` key), one bar per metric; NaN or missing values are skipped."""
    models = list(table)
    width = 0.8 / max(len(metrics), 1)
    palette = colormaps["tab10"]
    with _saved_figure(path, (max(5.0, 0.6 * len(models) * max(1, len(metrics)) + 2), 4.5)) as fig:
        ax = fig.add_subplot()
        positions = np.arange(len(models))
        for index, metric in enumerate(metrics):
            offset = (index - (len(metrics) - 1) / 2) * width
            xs, heights = [], []
            for position, model in zip(positions, models):
                value = table[model].get(metric, float("nan"))
                if _finite(value):
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
    with _saved_figure(path, (5.5, 4.2)) as fig:
        ax = fig.add_subplot()
        for name, points in curves.items():
            finite = sorted((float(x), float(y)) for x, y in points if _finite(x) and _finite(y))
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
    values = _to_numpy(matrix).astype(np.float64)
    if values.shape != (len(row_names), len(col_names)):
        raise ValueError(f"matrix shape {values.shape} does not match {len(row_names)} x {len(col_names)} names")
    finite = values[np.isfinite(values)]
    low = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    high = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    cmap = colormaps["viridis"].with_extremes(bad="lightgray")
    with _saved_figure(path, (1.0 * len(col_names) + 3, 0.8 * len(row_names) + 2)) as fig:
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
