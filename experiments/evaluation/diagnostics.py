"""Diagnostic plots and tables written after training and by ``task=evaluate``.

For the test split of a trained detector, :func:`write_diagnostics` writes into
``<out_dir>/plots/`` (and logs to MLflow under ``plots/``):

* ``confusion_matrix.png``: at threshold 0.5;
* ``calibration.png``: reliability diagram over a histogram of the scores, of the raw P(synthetic) and, when
  the run has a val-fitted calibrator, of the calibrated P(synthetic) beside it (before / after);
* ``roc.png``: the pooled ROC curve and one per generator;
* ``per_generator_accuracy.png``: accuracy per generator, pooled value dashed;
* ``tsne.png``: t-SNE (van der Maaten & Hinton, 2008) of the penultimate features
  (``forward_features``; for a scikit-learn pipeline, the scaled feature vectors) of
  up to ``settings.max_samples`` test images (default 512), coloured by label
  and by generator, as SPECTRAFORGE's latent-space figure;
* ``gradcam.png``: Grad-CAM overlays (Selvaraju et al., 2017) of ``settings.gradcam_images``
  real and as many synthetic test images (default 4), one column per stream of
  ``model.cam_layers()`` (spatial and frequency side by side for SPECTRAFORGE).
  Not drawn for scikit-learn pipelines, which have no convolutional layer.

and, logged at the root of the run's artifacts, ``<out_dir>/metrics_by_generator.{csv,json}`` (every test
metric per generator, each generator's fakes against *its own* reals, plus the pooled ``all`` row) and
``<out_dir>/metrics_by_generator_vs_all_reals.{csv,json}`` (each generator's fakes against *every* real test
image); the CSV column ``compared_with`` says which.

A plot that fails is reported with a warning and the others are still written,
unless ``settings.strict`` is true (tests use it), in which case it raises.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from experiments.data.dataset import collate_skipping
from experiments.evaluation.metrics import ALL_GROUPS, metrics_by_group, metrics_vs_all_reals
from experiments.data.layouts import CLASS_NAMES
from experiments.evaluation.curves import plot_calibration, plot_confusion_matrix, plot_per_group_accuracy, plot_roc
from experiments.evaluation.embeddings import plot_gradcam_grid, plot_tsne
from experiments.evaluation.plotting import with_subject
from features.precision import as_unit_float

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
DEFAULT_MAX_SAMPLES = 512
DEFAULT_GRADCAM_IMAGES = 4
FEATURE_BATCH = 64
TSNE_THREADS = 1
#: per-generator tables: fakes against their own generator's reals, and against every real test image.
OWN_REALS_STEM = "metrics_by_generator"
ALL_REALS_STEM = "metrics_by_generator_vs_all_reals"


@dataclass(frozen=True)
class DiagnosticsSettings:
    """What the diagnostics of a run are drawn with.

    Args:
        subject: what every plot shows, for its title (:func:`plot_subject`).
        max_samples: test images in the t-SNE.
        gradcam_images: real (and as many synthetic) test images in the Grad-CAM figure.
        seed: seed of the t-SNE subset, the Grad-CAM rows and the t-SNE itself.
        strict: raise on the first failing plot instead of warning (tests).
    """

    subject: str = "detector on data, test split"
    max_samples: int = DEFAULT_MAX_SAMPLES
    gradcam_images: int = DEFAULT_GRADCAM_IMAGES
    seed: int = 0
    strict: bool = False


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------
def write_diagnostics(kind, model, datamodule, test, out_dir: Path, logger,
                      settings: DiagnosticsSettings = DiagnosticsSettings(),
                      calibrated_prob: np.ndarray | None = None, calibration_label: str = "calibrated",
                      ) -> list[Path]:
    """Write (and log to MLflow, when ``logger`` is given) every diagnostic of ``test``; return the files written.

    Args:
        kind: the detector's kind (``experiments.training.kinds.DetectorKind``): it embeds images for the t-SNE
            and says whether Grad-CAM can explain ``model``.
        model: the trained detector in eval mode (``nn.Module``) or a fitted scikit-learn pipeline.
        datamodule: its ``datasets["test"]`` holds the images ``test.index`` points to.
        test: :class:`experiments.evaluation.predictions.Predictions` of the test split.
        out_dir: the run folder; plots go to ``out_dir/plots``.
        logger: an ``MLFlowLogger`` or None.
        settings: :class:`DiagnosticsSettings`.
        calibrated_prob: ``test.prob`` after the run's val-fitted calibrator, drawn beside the raw scores in the
            reliability diagram (None: raw scores only); ``calibration_label`` names it there.
    """
    out_dir = Path(out_dir)
    plot_dir = out_dir / PLOTS_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    strict = settings.strict
    names = list(test.generator_names)
    by_generator = metrics_by_group(test.prob, test.label, test.generator, dict(enumerate(names)))
    vs_all_reals = metrics_vs_all_reals(test.prob, test.label, test.generator, dict(enumerate(names)))
    dataset = datamodule.datasets["test"] if datamodule is not None else None
    seed = settings.seed

    plots: list[tuple[str, Callable[[Path], Any]]] = [
        ("confusion_matrix", lambda p: plot_confusion_matrix(test.prob, test.label, p, threshold=0.5)),
        ("calibration", lambda p: plot_calibration(test.prob, test.label, p, probs_calibrated=calibrated_prob,
                                                   calibrated_label=calibration_label)),
        ("roc", lambda p: plot_roc(roc_curves(test), p)),
        ("per_generator_accuracy", lambda p: plot_per_group_accuracy(by_generator, p, metric="accuracy")),
        ("tsne", lambda p: _tsne(kind, model, dataset, test, p, settings.max_samples, seed)),
    ]
    if kind.supports_cam(model):
        plots.append(("gradcam", lambda p: _gradcam(model, dataset, test, p, settings.gradcam_images, seed)))
    else:
        log.info("diagnostics: no Grad-CAM for %s (no cam_layers)", type(model).__name__)

    written: list[Path] = []
    subject = settings.subject
    for name, draw in plots:
        path = plot_dir / f"{name}.png"
        if _attempt(name, lambda: with_subject(subject, draw, path), strict):
            written.append(path)
            _log(logger, path, PLOTS_DIR, strict)
    for path in [*write_metrics_tables(by_generator, out_dir),
                 *write_metrics_tables(vs_all_reals, out_dir, ALL_REALS_STEM, compared_with="all reals")]:
        written.append(path)
        _log(logger, path, None, strict)
    return written


def plot_subject(model: str | None, data: str | None, split: str = "test") -> str:
    """What every diagnostic plot shows, for its title: ``<model> on <data>, <split> split``."""
    return f"{model or 'detector'} on {data or 'data'}, {split} split"


def _attempt(name: str, action: Callable[[], Any], strict: bool) -> bool:
    try:
        action()
        return True
    except Exception as err:  # noqa: BLE001 - one failing diagnostic must not lose the others
        if strict:
            raise
        log.warning("diagnostics: %s failed (%s: %s); the other diagnostics are still written",
                    name, type(err).__name__, err)
        return False


def _log(logger, path: Path, artifact_path: str | None, strict: bool) -> None:
    if logger is None:
        return
    from experiments.tracking import log_artifact

    _attempt(f"logging {path.name}", lambda: log_artifact(logger, path, artifact_path), strict)


# ---------------------------------------------------------------------------
# tables and curves
# ---------------------------------------------------------------------------
def roc_curves(test) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"all": (prob, label), <generator>: (prob, label), ...}`` for :func:`plot_roc`."""
    curves = {"all": (test.prob, test.label)}
    for gid in np.unique(test.generator):
        name = test.generator_names[gid] if 0 <= gid < len(test.generator_names) else str(gid)
        mask = test.generator == gid
        curves[name] = (test.prob[mask], test.label[mask])
    return curves


def write_metrics_tables(by_generator: dict[str, dict[str, float]], out_dir: Path, stem: str = OWN_REALS_STEM,
                         compared_with: str = "own reals") -> list[Path]:
    """``<stem>.json`` (nested) and ``<stem>.csv`` (one row per group, ``all`` first; the column
    ``compared_with`` names the negatives: a generator's ``own reals`` or ``all reals`` of the split)."""
    out_dir = Path(out_dir)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(by_generator, indent=2, allow_nan=True))
    csv_path = out_dir / f"{stem}.csv"
    columns = sorted({k for metrics in by_generator.values() for k in metrics})
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["generator", "compared_with", *columns])
        for group, metrics in by_generator.items():
            against = "all reals" if group == ALL_GROUPS else compared_with
            writer.writerow([group, against, *(metrics.get(c, float("nan")) for c in columns)])
    return [csv_path, json_path]


# ---------------------------------------------------------------------------
# images of the test split
# ---------------------------------------------------------------------------
def sample_rows(test, max_samples: int, seed: int = 0) -> np.ndarray:
    """Positions (into ``test``'s arrays) of a seeded random subset of at most ``max_samples`` rows, sorted."""
    n = len(test.prob)
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def load_items(dataset, indices, batch_size: int = FEATURE_BATCH):
    """Yield collated batches (``image`` float in [0, 1], ``label``, ``generator``, ``index``) of ``dataset[indices]``."""
    loader = DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=batch_size, shuffle=False,
                        num_workers=0, collate_fn=collate_skipping)
    for batch in loader:
        if not batch.get("empty"):
            yield {**batch, "image": as_unit_float(batch["image"])}


def embed(kind, model, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Penultimate features ``(N, D)`` (what the detector's classifier sees, :meth:`DetectorKind.embed`), labels
    and generator ids of the images in ``batches``."""
    feats, labels, gens = [], [], []
    for batch in batches:
        feats.append(kind.embed(model, batch["image"]))
        labels.append(batch["label"].numpy())
        gens.append(batch["generator"].numpy())
    if not feats:
        raise ValueError("no readable test image to embed")
    return np.concatenate(feats), np.concatenate(labels).astype(int), np.concatenate(gens).astype(int)


def _tsne(kind, model, dataset, test, path: Path, max_samples: int, seed: int) -> Path:
    if dataset is None:
        raise ValueError("t-SNE needs the datamodule's test dataset")
    from threadpoolctl import threadpool_limits

    rows = sample_rows(test, max_samples, seed)
    features, labels, gens = embed(kind, model, load_items(dataset, test.index[rows]))
    # one OpenMP thread: scikit-learn's Barnes-Hut t-SNE is several times slower when its threads compete for
    # cores with other work, and on 512 points a single thread takes a few seconds
    with threadpool_limits(limits=TSNE_THREADS):
        return plot_tsne(features, labels, gens, path, group_names=test.generator_names, seed=seed)


# ---------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------
def gradcam_rows(test, per_class: int, seed: int = 0) -> np.ndarray:
    """Positions of ``per_class`` real then ``per_class`` synthetic test rows (seeded order, generators mixed)."""
    order = np.random.default_rng(seed).permutation(len(test.label))
    picked = [order[test.label[order] == cls][:per_class] for cls in (0, 1)]
    return np.concatenate(picked).astype(int)


def gradcam_for_rows(model, dataset, test, rows) -> tuple[torch.Tensor, dict[str, np.ndarray], list[str]]:
    """Images, per-stream CAMs (explaining each image's true class) and row titles for ``test`` rows ``rows``."""
    from experiments.evaluation.gradcam import stream_cams

    position = {int(test.index[r]): int(r) for r in rows}
    batches = list(load_items(dataset, test.index[rows], batch_size=max(len(rows), 1)))
    if not batches:
        raise ValueError("no readable test image for Grad-CAM")
    images = torch.cat([b["image"] for b in batches])
    indices = torch.cat([b["index"] for b in batches]).tolist()
    labels = torch.cat([b["label"] for b in batches]).long().tolist()
    cams = stream_cams(model, images, target_classes=labels)
    titles = []
    for index, label in zip(indices, labels):
        row = position[index]
        gid = int(test.generator[row])
        gen = test.generator_names[gid] if 0 <= gid < len(test.generator_names) else str(gid)
        titles.append(f"{CLASS_NAMES[label]} | {gen} | p={test.prob[row]:.2f}")
    return images, cams, titles


def _gradcam(model, dataset, test, path: Path, per_class: int, seed: int) -> Path:
    if dataset is None:
        raise ValueError("Grad-CAM needs the datamodule's test dataset")
    images, cams, titles = gradcam_for_rows(model, dataset, test, gradcam_rows(test, per_class, seed))
    # the frequency stream's map lives on the centred spectrum (same size as the image, DC in the middle): draw it
    # over the image's log-magnitude spectrum, in those coordinates
    label = {"frequency": "frequency: over log|FFT| (DC centre)"}
    shown = {label.get(name, name): cam for name, cam in cams.items()}
    backgrounds = {label["frequency"]: log_spectrum(images)} if "frequency" in cams else None
    return plot_gradcam_grid(images, shown, path, titles=titles, backgrounds=backgrounds)


def log_spectrum(images: torch.Tensor) -> np.ndarray:
    """``(N, H, W)`` centred ``log(1 + |FFT|)`` of each image's grey levels, scaled to [0, 1] per image."""
    grey = as_unit_float(images).float().mean(dim=1)
    spectrum = torch.log1p(torch.fft.fftshift(torch.fft.fft2(grey), dim=(-2, -1)).abs())
    low = spectrum.amin(dim=(-2, -1), keepdim=True)
    high = spectrum.amax(dim=(-2, -1), keepdim=True)
    return ((spectrum - low) / (high - low).clamp_min(1e-12)).numpy()
