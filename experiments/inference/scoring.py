"""The scoring loop: batches of images -> raw P(synthetic) per image for a trained detector.

``task=evaluate`` scores a split (:func:`score_split`), ``task=ood_stress`` scores groups of detectors that
share a preprocessing on the same perturbed batches (:class:`SharedScores`), and ``detect`` scores batches of
crops (:func:`score_images`); all three call :func:`score_images`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Iterator, Mapping

import torch

from experiments.evaluation.predictions import Predictions
from experiments.inference.loading import LoadedDetector
from experiments.process import progress


def score_images(detector: LoadedDetector, images: torch.Tensor, calibrated: bool = False) -> torch.Tensor:
    """``(B,)`` P(synthetic) of a ``(B, 3, H, W)`` batch (uint8, or float in [0, 1]): raw, or after the training
    run's calibrator when ``calibrated`` (:meth:`LoadedDetector.predict_calibrated_proba`)."""
    probs = detector.predict_calibrated_proba(images) if calibrated else detector.predict_proba(images)
    return probs.reshape(-1)


def readable_batches(loader: Iterable[Mapping], desc: str | None = None) -> Iterator[Mapping]:
    """The batches of ``loader`` that hold at least one readable image, with a progress bar when ``desc``."""
    batches = loader if desc is None else progress(loader, desc)
    return (batch for batch in batches if not batch.get("empty"))


def score_split(detector: LoadedDetector, loader: Iterable[Mapping], generator_names: list[str],
                  desc: str = "evaluate: scoring") -> Predictions:
    """P(synthetic) of every readable image of ``loader``, batch by batch, without gradients."""
    batches = [
        {"prob": score_images(detector, b["image"]), "label": b["label"], "generator": b["generator"],
         "index": b["index"]}
        for b in readable_batches(loader, desc)
    ]
    if not batches:
        raise ValueError("no readable image in this split")
    return Predictions.from_batches(batches, list(generator_names))


def tensor_digest(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and values (to recognise identical perturbed batches)."""
    data = x.detach().cpu().contiguous()
    return hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode() + data.numpy().tobytes()).hexdigest()


class SharedScores:
    """Raw P(synthetic) of several detectors on the same batches, by label; a batch identical to one already
    scored under the same ``key`` (a clean baseline: noise 0, blur 0, scale 1) is not scored again."""

    def __init__(self, detectors: Mapping[str, LoadedDetector]) -> None:
        self.detectors = dict(detectors)
        self._done: dict[tuple[Hashable, str], dict[str, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor, key: Hashable = ()) -> dict[str, torch.Tensor]:
        """``{label: (B,) P(synthetic)}`` of ``images`` for every detector."""
        digest = (key, tensor_digest(images))
        if digest not in self._done:
            self._done[digest] = {label: score_images(det, images) for label, det in self.detectors.items()}
        return self._done[digest]

    def forget(self) -> None:
        """Drop the scores kept for reuse (between batches whose keys never repeat)."""
        self._done.clear()
