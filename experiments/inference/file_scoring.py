"""Scoring image files in batches of views: decode, cut each image's views (one centre crop, a grid of crops or
every crop: :mod:`experiments.inference.tiling`), score every view of a batch of images in one forward pass and
pool each image's view scores; files that cannot be scored are kept with their reason."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from experiments.data.images import UnreadableImage, load_rgb
from experiments.data.transforms import ImageTooSmall, Preprocess
from experiments.inference.detection import Detection, Skipped
from experiments.inference.loading import LoadedDetector
from experiments.inference.scoring import score_views
from experiments.inference.tiling import Views, view_crops
from experiments.process import progress_bar

#: progress is shown from this many files on (a bar on a terminal, a line every 10 % or 30 s elsewhere)
PROGRESS_MIN_IMAGES = 20


def _load_one(path: Path, preprocess: Preprocess, views: Views) -> tuple | Skipped:
    """``(views, (w, h), covered)`` of the decoded image, or why it was skipped."""
    try:
        img = load_rgb(path)
        crops, covered = view_crops(img, preprocess, views)
        return crops, img.size, covered
    except UnreadableImage as err:
        return Skipped(str(path), err.reason, err.detail)
    except ImageTooSmall as err:
        return Skipped(str(path), "too small", str(err))
    except Exception as err:  # noqa: BLE001 - bad input must never stop the run
        return Skipped(str(path), "decode error", f"{type(err).__name__}: {err}")


def score_files(detector: LoadedDetector, files: Sequence[Path], preprocess: Preprocess, threshold: float,
                batch_size: int = 32, progress: bool | None = None, views: Views | None = None,
                calibrated: bool = False, pooling: str = "mean") -> tuple[list[Detection], list[Skipped]]:
    """Decode ``files``, cut their ``views`` (default: the detector's ``auto``) and score them in batches of about
    ``batch_size`` views, each image's score being the ``pooling`` of its views' P(synthetic)
    (:func:`~experiments.inference.scoring.score_views`); calibrated when ``calibrated`` (see
    :meth:`LoadedDetector.predict_calibrated_proba`)."""
    if progress is None:
        progress = len(files) >= PROGRESS_MIN_IMAGES
    views = (views or Views()).for_detector(detector.native_views)
    rows: list[Detection] = []
    skipped: list[Skipped] = []
    pending: list[tuple[Path, torch.Tensor, tuple[int, int], float]] = []  # path, views, size, covered

    def flush() -> None:
        if not pending:
            return
        counts = torch.tensor([len(item[1]) for item in pending])
        probs = score_views(detector, torch.cat([item[1] for item in pending]), counts, pooling, calibrated)
        for (path, crops, size, covered), p in zip(pending, probs.tolist()):
            rows.append(Detection(str(path), p, "synthetic" if p >= threshold else "real",
                                  size[0], size[1], covered, len(crops)))
        pending.clear()

    with progress_bar(len(files), "scoring", unit="img", enabled=progress) as bar:
        for path in files:
            item = _load_one(path, preprocess, views)
            if isinstance(item, Skipped):
                skipped.append(item)
            else:
                if pending and sum(len(p[1]) for p in pending) + len(item[0]) > batch_size:
                    flush()
                pending.append((path, *item))
            bar.update(1)
        flush()
    return rows, skipped

