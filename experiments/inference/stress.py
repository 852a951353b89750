"""The OOD stress engine: trained detectors scored on perturbed copies of a test split.

For every (perturbation, strength) of the grid (:mod:`experiments.data.perturbations`) the test split is scored
in one of two orders (``ood.order``):

* ``before_preprocessing`` (deployment order, the default): each file is decoded, perturbed at its native size
  (:func:`~experiments.data.perturbations.perturb_image`), and then the detector's own preprocessing (equalizer,
  resize, crop) runs on the result (:func:`perturbed_test_loader`, :func:`score_group_before_preprocessing`);
* ``after_preprocessing``: the preprocessed float batches are perturbed
  (:func:`~experiments.data.perturbations.apply`, :func:`score_group`).

Detectors that share a preprocessing (:func:`preprocessing_of`) share the batches, so they see exactly the same
pixels, and the noise of one image depends only on the seed, the perturbation and the image's dataset index.
With views other than one centre crop (``eval.views``, :mod:`experiments.inference.tiling`), each perturbed
image's views are scored and pooled (``eval.pooling``); detectors are grouped by their views as well.
Only the scores are kept in memory, so large test sets stream. The robustness protocols are those of
CNNDetection (Wang et al. 2020, "CNN-generated images are surprisingly easy to spot... for now"), the noise
injection of SPECTRAFORGE and the laundering chains (:mod:`experiments.data.laundering`), which change image
sizes: a laundered image that became smaller than a detector's crop is skipped or upscaled (``too_small``),
and each grid point counts both (``skipped``, ``upscaled``) and keeps its own labels. Besides the ranking
metrics, each point reports TPR and FPR at the detector's operating-point threshold
(:attr:`~experiments.inference.loading.LoadedDetector.operating_threshold`).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from experiments.data.dataset import PerturbedImageDataset, collate_skipping
from experiments.data.perturbations import Perturbation, apply, perturb_image, perturbation_order
from experiments.evaluation.metrics import binary_metrics
from experiments.evaluation.operating_point import rates_at_threshold
from experiments.inference.loading import LoadedDetector
from experiments.inference.scoring import SharedScores, readable_batches
from experiments.inference.tiling import Views, views_loader
from experiments.tracking import RUN_ID
from features.precision import as_unit_float


#: Metrics logged per detector and grid point, as ``ood/<perturbation>/<strength>/<metric>``; the last two at the
#: detector's operating-point threshold (NaN, so not logged, for a run without one)
OOD_METRICS: tuple[str, ...] = ("auc", "ap", "accuracy", "tpr_at_op", "fpr_at_op")

#: ``too_small`` values: what happens to a perturbed image smaller than the crop (see :func:`perturbed_test_loader`)
TOO_SMALL: tuple[str, ...] = ("skip", "upscale")

#: ``{detector label: {grid point key: P(synthetic) per test image}}``, the test labels (one array for every point,
#: or one per point key where points may keep different images) and ``{key: {"skipped", "upscaled"}}`` counts
GroupScores = tuple[dict[str, dict[str, np.ndarray]], np.ndarray | dict[str, np.ndarray], dict[str, dict[str, int]]]


@dataclass
class StressedDetector:
    """A trained detector under stress: ``label`` names it in tables and plots, ``ref`` is what was loaded (a run
    id or a resolved path), ``experiment_id`` the MLflow experiment of its training run, when known."""

    label: str
    ref: str
    loaded: LoadedDetector
    experiment_id: str | None = None


def deduplicate_labels(detectors: Sequence[StressedDetector]) -> None:
    """Two detectors of one model get ``<model>-<short ref>`` labels (in place)."""
    counts: dict[str, int] = defaultdict(int)
    for det in detectors:
        counts[det.label] += 1
    for det in detectors:
        if counts[det.label] > 1:
            short = det.ref[:8] if RUN_ID.match(det.ref) else Path(det.ref).parent.name or det.ref
            det.label = f"{det.label}-{short}"


def preprocessing_of(detector: StressedDetector) -> str:
    """What a detector's input pipeline depends on: crop size, resize size and equalizer (with its settings)."""
    return repr(detector.loaded.preprocess)


# -- data: the test files, perturbed before the preprocessing -----------------------------------------------
def _perturb_file(perturbation: Perturbation, seed: int, image, index: int):
    return perturb_image(image, perturbation, seed, index)


def too_small_policy(value: str | None = None) -> str:
    """``ood.too_small`` (default ``skip``), checked against :data:`TOO_SMALL`."""
    value = value or TOO_SMALL[0]
    if value not in TOO_SMALL:
        raise ValueError(f"ood.too_small={value!r} is not supported; choose one of {TOO_SMALL}")
    return str(value)


def perturbed_test_loader(datamodule, perturbation: Perturbation, seed: int, too_small: str | None = None,
                          views: Views | None = None) -> DataLoader:
    """The test files of ``datamodule``, each perturbed as a decoded image and then preprocessed by the
    datamodule's own (evaluation) preprocessing, equalizer included; cut into ``views`` when given (the same rule). With
    ``too_small="upscale"`` and no ``resize_size`` (which would resize it anyway), a perturbed image whose short
    side fell below the crop is resized up to it (counted per batch in ``upscaled``); with ``"skip"`` it is
    dropped (counted in ``skipped``)."""
    preprocess = datamodule.preprocess
    upscale = too_small_policy(too_small) == "upscale" and preprocess.resize_size is None
    if views is not None and not views.center_only:
        return views_loader(datamodule, "test", views, functools.partial(_perturb_file, perturbation, seed),
                            upscale_below=preprocess.crop_size if upscale else None)
    dataset = PerturbedImageDataset(datamodule.datasets["test"].samples, preprocess, datamodule.generator_names,
                                    functools.partial(_perturb_file, perturbation, seed),
                                    upscale_below=preprocess.crop_size if upscale else None)
    return DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=False, num_workers=datamodule.num_workers,
                      collate_fn=collate_skipping, multiprocessing_context=datamodule._worker_context())


# -- scoring -----------------------------------------------------------------------------------------------
def score_group(detectors: Sequence[StressedDetector], loader: DataLoader, grid: Sequence[Perturbation],
                seed: int, pooling: str = "mean") -> GroupScores:
    """P(synthetic) of each detector at each grid point over ``loader``: ``({label: {key: probs}}, labels)``.

    All ``detectors`` must share one preprocessing (they receive the same tensors). Grid points
    that leave a batch unchanged (the clean baselines) are scored once per batch and reused.
    """
    probs: dict[str, dict[str, list[torch.Tensor]]] = {d.label: {p.key: [] for p in grid} for d in detectors}
    labels: list[torch.Tensor] = []
    scores = SharedScores({d.label: d.loaded for d in detectors}, pooling)
    for batch in readable_batches(loader, f"OOD stress: {len(detectors)} detector(s) x {len(grid)} settings"):
        images, ids, views = as_unit_float(batch["image"]), batch["index"], batch.get("views")
        if views is not None:  # every view of an image is perturbed with the image's seed
            ids = ids.repeat_interleave(views)
        labels.append(batch["label"].reshape(-1))
        scores.forget()  # identical inputs (noise 0, blur 0, scale 1) run once per batch
        for perturbation in grid:
            scored = scores(apply(images, perturbation, seed, sample_ids=ids), views=views)
            for det in detectors:
                probs[det.label][perturbation.key].append(scored[det.label])
    if not labels:
        raise ValueError("the test split has no readable images")
    out = {label: {key: torch.cat(parts).numpy() for key, parts in by_key.items()} for label, by_key in probs.items()}
    return out, torch.cat(labels).numpy(), {}


def score_group_before_preprocessing(detectors: Sequence[StressedDetector], datamodule,
                                     grid: Sequence[Perturbation], seed: int, too_small: str | None = None,
                                     views: Views | None = None, pooling: str = "mean") -> GroupScores:
    """As :func:`score_group`, in deployment order: each grid point perturbs the decoded files, then the shared
    preprocessing runs (:func:`perturbed_test_loader`). Batches identical to one already scored (the clean
    baselines) are scored once. Each point keeps its own labels and counts (a laundering crop may make some
    images too small); a point with no image left gets empty scores, so NaN metrics."""
    probs: dict[str, dict[str, np.ndarray]] = {d.label: {} for d in detectors}
    labels: dict[str, np.ndarray] = {}
    counts: dict[str, dict[str, int]] = {}
    scores = SharedScores({d.label: d.loaded for d in detectors}, pooling)
    for perturbation in grid:
        parts: dict[str, list[torch.Tensor]] = {d.label: [] for d in detectors}
        point_labels = [torch.empty(0)]
        counted = {"skipped": 0, "upscaled": 0}
        for number, batch in enumerate(perturbed_test_loader(datamodule, perturbation, seed, too_small, views)):
            counted["skipped"] += int(batch.get("skipped", 0))
            if batch.get("empty"):
                continue
            counted["upscaled"] += int(batch["upscaled"].sum()) if "upscaled" in batch else 0
            scored = scores(as_unit_float(batch["image"]), key=number, views=batch.get("views"))
            for det in detectors:
                parts[det.label].append(scored[det.label])
            point_labels.append(batch["label"].reshape(-1).float())
        labels[perturbation.key] = torch.cat(point_labels).numpy()
        counts[perturbation.key] = counted
        for det in detectors:
            probs[det.label][perturbation.key] = torch.cat([torch.empty(0), *parts[det.label]]).numpy()
    if not any(len(v) for v in labels.values()):
        raise ValueError("the test split has no readable images")
    return probs, labels, counts


def point_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict[str, float]:
    """:data:`OOD_METRICS` and ``n`` of one detector at one grid point; the rates at ``threshold`` (NaN without
    one); all NaN (``n`` 0) when no image is left."""
    if len(labels) == 0:
        return {**{m: float("nan") for m in OOD_METRICS}, "n": 0}
    metrics = binary_metrics(probs, labels)
    out = {m: metrics[m] for m in ("auc", "ap", "accuracy", "n")}
    rates = rates_at_threshold(probs, labels, threshold) if threshold is not None else {}
    out["tpr_at_op"], out["fpr_at_op"] = rates.get("tpr", float("nan")), rates.get("fpr", float("nan"))
    return out


def evaluate_detectors(detectors: Sequence[StressedDetector], grid: Sequence[Perturbation], seed: int,
                       test_datamodule: Callable[[StressedDetector], Any], order: str | None = None,
                       too_small: str | None = None, views: Views | None = None, pooling: str = "mean",
                       ) -> dict[str, dict[str, dict[str, float]]]:
    """``{detector label: {"<perturbation>/<strength>": {*OOD_METRICS, "n", "skipped", "upscaled"}}}`` in
    ``order``, each image scored on its ``views`` (default ``auto``) pooled by ``pooling``; ``too_small`` as
    :func:`perturbed_test_loader` (deployment order only).

    Detectors are grouped by :func:`preprocessing_of` and their views; ``test_datamodule(first detector of a
    group)`` gives the set-up datamodule whose test split that group is scored on.
    """
    order = perturbation_order(order)
    views = views or Views()
    too_small = too_small_policy(too_small)
    resizing = sorted({p.name for p in grid if p.kind is not None and p.kind.changes_size})
    if order == "after_preprocessing" and resizing:
        raise ValueError(f"ood.order=after_preprocessing cannot run {resizing}: they change the image size, so they "
                         "run on the decoded file; use ood.order=before_preprocessing")
    groups: dict[tuple, list[StressedDetector]] = defaultdict(list)
    for det in detectors:
        groups[(preprocessing_of(det), views.for_detector(det.loaded.native_views))].append(det)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for (_, group_views), members in groups.items():
        datamodule = test_datamodule(members[0])
        if order == "before_preprocessing":
            probs, labels, counts = score_group_before_preprocessing(members, datamodule, grid, seed, too_small,
                                                                     group_views, pooling)
        else:
            loader = (datamodule.test_dataloader() if group_views.center_only
                      else views_loader(datamodule, "test", group_views))
            probs, labels, counts = score_group(members, loader, grid, seed, pooling)
        for det in members:
            threshold = det.loaded.operating_threshold
            results[det.label] = {}
            for p in grid:
                point_labels = labels[p.key] if isinstance(labels, dict) else labels
                counted = counts.get(p.key, {})
                results[det.label][p.key] = {**point_metrics(probs[det.label][p.key], point_labels, threshold),
                                             "skipped": counted.get("skipped", 0),
                                             "upscaled": counted.get("upscaled", 0)}
    return {d.label: results[d.label] for d in detectors}
