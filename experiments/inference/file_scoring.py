"""Scoring image files in batches of crops: decode, preprocess (one centre crop, or a grid of crops with
``tile``), and average each image's crop scores; files that cannot be scored are kept with their reason."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from experiments.data.images import UnreadableImage, load_rgb
from experiments.data.transforms import ImageTooSmall, Preprocess
from experiments.inference.detection import Detection, Skipped
from experiments.inference.loading import LoadedDetector
from experiments.inference.scoring import score_images
from experiments.inference.tiling import crop_fraction, tile_crops
from experiments.process import progress_bar

#: progress is shown from this many files on (a bar on a terminal, a line every 10 % or 30 s elsewhere)
PROGRESS_MIN_IMAGES = 20


def _load_one(path: Path, preprocess: Preprocess, tile: bool = False) -> torch.Tensor | Skipped | tuple:
    """The preprocessed image (one crop, or ``(crops, (w, h), covered)`` when ``tile``), or why it was skipped."""
    try:
        img = load_rgb(path)
        if tile:
            crops, covered = tile_crops(img, preprocess)
            return crops, img.size, covered
        return preprocess(img)
    except UnreadableImage as err:
        return Skipped(str(path), err.reason, err.detail)
    except ImageTooSmall as err:
        return Skipped(str(path), "too small", str(err))
    except Exception as err:  # noqa: BLE001 - bad input must never stop the run
        return Skipped(str(path), "decode error", f"{type(err).__name__}: {err}")


def score_files(detector: LoadedDetector, files: Sequence[Path], preprocess: Preprocess, threshold: float,
                batch_size: int = 32, progress: bool | None = None, tile: bool = False, calibrated: bool = False,
                ) -> tuple[list[Detection], list[Skipped]]:
    """Decode, preprocess and score ``files`` in batches of ``batch_size`` crops; with ``tile``, each image's
    score is the mean P(synthetic) of a grid of crops (:func:`~experiments.inference.tiling.tile_crops`). P(synthetic) is calibrated when
    ``calibrated`` (see :meth:`LoadedDetector.predict_calibrated_proba`)."""
    if progress is None:
        progress = len(files) >= PROGRESS_MIN_IMAGES
    rows: list[Detection] = []
    skipped: list[Skipped] = []
    batch: list[torch.Tensor] = []
    owners: list[int] = []  # the image (index into pending) of each crop in batch
    pending: list[dict] = []  # images whose crops are (partly) batched: path, size, covered, scores

    def flush() -> None:
        if not batch:
            return
        images = torch.stack(batch)
        probs = score_images(detector, images, calibrated).tolist()
        for owner, p in zip(owners, probs):
            pending[owner]["scores"].append(float(p))
        batch.clear()
        owners.clear()
        for item in pending:
            p = sum(item["scores"]) / len(item["scores"])
            rows.append(Detection(str(item["path"]), p, "synthetic" if p >= threshold else "real",
                                  item["size"][0], item["size"][1], item["covered"], len(item["scores"])))
        pending.clear()

    with progress_bar(len(files), "scoring", unit="img", enabled=progress) as bar:
        for path in files:
            item = _load_one(path, preprocess, tile)
            if isinstance(item, Skipped):
                skipped.append(item)
            else:
                crops, size, covered = item if tile else (item[None], _image_size(path), None)
                if covered is None:
                    covered = crop_fraction(*size, preprocess) if size[0] else 1.0
                if len(batch) + len(crops) > batch_size:
                    flush()
                pending.append({"path": path, "size": size, "covered": covered, "scores": []})
                batch.extend(crops)
                owners.extend([len(pending) - 1] * len(crops))
                if len(batch) >= batch_size:
                    flush()
            bar.update(1)
        flush()
    return rows, skipped


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header (0, 0 when unknown)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - the image decoded once already; the size only feeds a warning
        return 0, 0
