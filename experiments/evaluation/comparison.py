"""Paired comparison of detectors scored on the same test images.

Two detectors can only be compared pairwise on identical images: :func:`align` matches the per-image
predictions of several runs by image key (``predictions_test.csv``, written by ``task=train``) and refuses
when the sets differ. :func:`pairing_keys` chooses the key: the content hash of each file, so runs made on
other mounts or machines pair; for runs written before the hash column, the path relative to ``data.root``,
then the absolute path, saying so. :func:`pairwise_tests` then runs, for every pair,

* DeLong's test of the two AUROCs (DeLong, DeLong & Clarke-Pearson, 1988), with the interval of the
  difference, and
* McNemar's test (McNemar, 1947) of the errors, each detector thresholded at its own val-chosen threshold,

and Holm-adjusts each family of p-values (Holm, 1979). The statistics live in
:mod:`experiments.evaluation.paired_tests`; this module arranges them.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.evaluation.paired_tests import delong_test, holm_adjust, mcnemar_test


class MismatchedImages(ValueError):
    """Two runs were not scored on identical test images, so no paired test applies."""


@dataclass
class DetectorScores:
    """One detector's per-image test scores: ``prob`` = P(synthetic) and 0/1 ``label`` for each image ``path``;
    ``threshold`` is its val-chosen decision threshold; ``run`` names the run it comes from."""

    name: str
    run: str
    path: np.ndarray
    label: np.ndarray
    prob: np.ndarray
    threshold: float = 0.5


@dataclass
class PredictionFile:
    """The columns of one ``predictions_<split>.csv``; ``relpath`` and ``hash`` hold empty strings in files
    written before those columns."""

    path: np.ndarray
    relpath: np.ndarray
    hash: np.ndarray
    label: np.ndarray
    prob: np.ndarray


def read_prediction_file(path: str | Path) -> PredictionFile:
    """Every column :func:`align` may pair by, of a ``predictions_<split>.csv`` (see
    :func:`experiments.evaluation.predictions.write_predictions_csv`)."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"path", "label", "prob"} - set(rows[0] if rows else {})
    if rows and missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)}; it is not a predictions CSV of task=train")

    def column(name: str) -> np.ndarray:
        return np.array([r.get(name) or "" for r in rows], dtype=object)

    return PredictionFile(column("path"), column("relpath"), column("hash"),
                          np.array([int(r["label"]) for r in rows], dtype=np.int64),
                          np.array([float(r["prob"]) for r in rows], dtype=np.float64))


def read_predictions_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(path, label, prob)`` arrays of a ``predictions_<split>.csv``."""
    found = read_prediction_file(path)
    return found.path, found.label, found.prob


#: what :func:`pairing_keys` pairs images by, best first
PAIRING = ("hash", "relpath", "path")


def pairing_keys(files: Sequence[PredictionFile]) -> tuple[list[np.ndarray], str]:
    """One key per image of each file, and which column they come from: the content hash when every file has
    it for every image, else the path relative to ``data.root`` (older runs), else the absolute path (the oldest).

    Files with identical bytes under two names get the hash and their rank among those copies by relative path
    (then path), so each key is unique and the same on every mount."""
    for kind in PAIRING:
        if all(len(f.label) == 0 or all(getattr(f, kind)) for f in files):
            break
    if kind != "hash":
        return [np.asarray(getattr(f, kind), dtype=object) for f in files], kind
    keys = []
    for f in files:
        order = sorted(range(len(f.hash)), key=lambda i: (f.hash[i], f.relpath[i], f.path[i]))
        key = np.empty(len(order), dtype=object)
        previous, rank = None, 0
        for i in order:
            rank = rank + 1 if f.hash[i] == previous else 0
            previous = f.hash[i]
            key[i] = f.hash[i] if rank == 0 else f"{f.hash[i]}#{rank}"
        keys.append(key)
    return keys, kind


def align(detectors: Sequence[DetectorScores]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(paths, labels, probs)`` of the images every detector scored, rows matched by path.

    ``probs`` is ``(k, N)`` in the order of ``detectors``; images are sorted by path. Raises
    :class:`MismatchedImages` naming the runs and how many images differ when two detectors were not scored
    on the same set of images, or disagree on an image's label; ``ValueError`` when a run lists one image twice.
    """
    if not detectors:
        raise ValueError("align needs at least one detector")
    orders = []
    for det in detectors:
        unique, counts = np.unique(det.path, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"run {det.run} ({det.name}) lists {int((counts > 1).sum())} image paths more than once")
        orders.append(np.argsort(det.path, kind="stable"))
    first = detectors[0]
    paths = first.path[orders[0]]
    labels = first.label[orders[0]]
    for det, order in zip(detectors[1:], orders[1:]):
        _check_same_images(first, det)
        if not np.array_equal(det.label[order], labels):
            n = int(np.sum(det.label[order] != labels))
            raise MismatchedImages(
                f"runs {first.run} ({first.name}) and {det.run} ({det.name}) give {n} of the same images different "
                f"labels; they were scored on different datasets. Retrain both on the same data.")
    probs = np.stack([det.prob[order] for det, order in zip(detectors, orders)])
    return paths, labels, probs


def _check_same_images(a: DetectorScores, b: DetectorScores) -> None:
    only_a = np.setdiff1d(a.path, b.path).size
    only_b = np.setdiff1d(b.path, a.path).size
    if only_a or only_b:
        raise MismatchedImages(
            f"runs {a.run} ({a.name}, {a.path.size} test images) and {b.run} ({b.name}, {b.path.size} test images) "
            f"were not scored on identical images: {only_a} only in the first, {only_b} only in the second. Paired "
            f"tests need the same test split: retrain them with the same data settings (data.root, "
            f"data.max_per_class, data.generators, ...).")


@dataclass
class PairResult:
    """Detector ``a`` against detector ``b`` on the same images; differences are ``a - b``.

    DeLong: ``auc_a``, ``auc_b``, ``delta_auc`` with its interval, raw and Holm-adjusted p. McNemar:
    accuracies at each detector's own threshold, the discordant counts (``b_only``: images only ``a`` gets
    right; ``c_only``: only ``b``), raw and Holm-adjusted p.
    """

    a: str
    b: str
    auc_a: float
    auc_b: float
    delta_auc: float
    delta_auc_low: float
    delta_auc_high: float
    delong_p: float
    acc_a: float
    acc_b: float
    b_only: int
    c_only: int
    mcnemar_p: float
    mcnemar_method: str
    delong_p_holm: float = math.nan
    mcnemar_p_holm: float = math.nan


def pairwise_tests(names: Sequence[str], labels: np.ndarray, probs: np.ndarray, thresholds: Sequence[float],
                   confidence: float = 0.95) -> list[PairResult]:
    """DeLong and McNemar tests for every unordered pair of the ``k`` detectors (rows of ``probs``), each
    family Holm-adjusted over its ``k (k - 1) / 2`` p-values. A detector whose threshold is NaN gets NaN
    McNemar results (left out of that family's adjustment)."""
    if probs.shape[0] != len(names) or len(thresholds) != len(names):
        raise ValueError(f"{len(names)} names, {probs.shape[0]} score rows and {len(thresholds)} thresholds")
    results = [_pair(names[i], names[j], labels, probs[i], probs[j], thresholds[i], thresholds[j], confidence)
               for i, j in itertools.combinations(range(len(names)), 2)]
    for family in ("delong_p", "mcnemar_p"):
        adjusted = holm_adjust([getattr(r, family) for r in results]) if results else []
        for result, value in zip(results, adjusted):
            setattr(result, f"{family}_holm", float(value))
    return results


def _pair(a: str, b: str, labels: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, threshold_a: float,
          threshold_b: float, confidence: float) -> PairResult:
    delong = delong_test(prob_a, prob_b, labels, confidence)
    if math.isnan(threshold_a) or math.isnan(threshold_b):
        acc_a = acc_b = mcnemar_p = math.nan
        b_only = c_only = 0
        method = "n/a"
    else:
        correct_a = (prob_a >= threshold_a) == (labels == 1)
        correct_b = (prob_b >= threshold_b) == (labels == 1)
        mcnemar = mcnemar_test(correct_a, correct_b)
        acc_a, acc_b = float(correct_a.mean()), float(correct_b.mean())
        b_only, c_only, mcnemar_p, method = mcnemar.b, mcnemar.c, mcnemar.p_value, mcnemar.method
    return PairResult(a, b, delong.auc_a, delong.auc_b, delong.diff, delong.ci_low, delong.ci_high, delong.p_value,
                      acc_a, acc_b, b_only, c_only, mcnemar_p, method)


def matrix(names: Sequence[str], results: Sequence[PairResult], field: str, antisymmetric: bool = False) -> np.ndarray:
    """``(k, k)`` matrix of one field of the pair results, NaN on the diagonal; ``[i, j]`` is row ``i`` against
    column ``j``, so an ``antisymmetric`` field (a difference) changes sign below the diagonal."""
    index = {name: i for i, name in enumerate(names)}
    out = np.full((len(names), len(names)), math.nan)
    for r in results:
        value = float(getattr(r, field))
        out[index[r.a], index[r.b]] = value
        out[index[r.b], index[r.a]] = (0.0 - value) if antisymmetric else value  # 0 - 0 is +0, not -0
    return out
