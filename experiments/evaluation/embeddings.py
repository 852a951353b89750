"""Figures of what a detector looks at: t-SNE of its penultimate features, and Grad-CAM grids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps

from experiments.data.layouts import CLASS_NAMES
from experiments.evaluation.plotting import saved_figure, to_numpy


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

    feats = to_numpy(features).astype(np.float64).reshape(len(features), -1)
    label_array = to_numpy(labels).astype(int).reshape(-1)
    group_array = to_numpy(groups).astype(int).reshape(-1)
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

    with saved_figure(path, (11.0, 5.0)) as fig:
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
    backgrounds: Mapping[str, Any] | None = None,
) -> str | Path:
    """Grid of class-activation maps: one row per image, the input then one overlay per CAM name.

    ``images`` is (N, 3, H, W) in [0, 1]; each ``cams[name]`` is (N, H, W) in [0, 1]
    (computed elsewhere, e.g. Grad-CAM, Selvaraju et al., 2017). Overlays blend the
    ``jet`` colour map with weight ``alpha``. ``titles`` labels the rows. ``backgrounds[name]``, (N, H, W) in
    [0, 1], replaces the input under that CAM (e.g. the log-spectrum under a frequency-stream CAM).
    """
    raw = to_numpy(images)
    image_array = np.clip(raw.astype(np.float64) / (255.0 if raw.dtype == np.uint8 else 1.0), 0.0, 1.0)
    if image_array.ndim != 4 or image_array.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 3, H, W), got shape {image_array.shape}")
    image_array = np.repeat(image_array, 3, axis=1) if image_array.shape[1] == 1 else image_array
    rgb = image_array.transpose(0, 2, 3, 1)
    n = rgb.shape[0]
    cam_arrays = {name: np.clip(to_numpy(cam).astype(np.float64).reshape(n, *rgb.shape[1:3]), 0.0, 1.0)
                  for name, cam in cams.items()}
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    jet = colormaps["jet"]
    columns = 1 + len(cam_arrays)
    with saved_figure(path, (2.4 * columns, 2.4 * n), layout="constrained") as fig:
        axes = fig.subplots(n, columns, squeeze=False)
        for row in range(n):
            axes[row, 0].imshow(rgb[row])
            axes[row, 0].set_title(titles[row] if titles is not None else "input", fontsize=9)
            for col, (name, cam) in enumerate(cam_arrays.items(), start=1):
                under = rgb[row]
                if backgrounds is not None and name in backgrounds:
                    under = np.repeat(np.clip(to_numpy(backgrounds[name])[row], 0.0, 1.0)[..., None], 3, axis=-1)
                overlay = (1 - alpha) * under + alpha * jet(cam[row])[..., :3]
                axes[row, col].imshow(np.clip(overlay, 0.0, 1.0))
                axes[row, col].set_title(name, fontsize=9)
            for ax in axes[row]:
                ax.set_axis_off()
    return path
