"""The scoring loop: batches of images -> raw P(synthetic) per image for a trained detector.

``task=evaluate`` scores a split (:func:`score_split`), ``task=ood_stress`` scores groups of detectors that
share a preprocessing on the same perturbed batches (:class:`SharedScores`), and ``detect`` scores batches of
crops (:func:`score_images`); all three call :func:`score_images`. A batch of several views per image
(``eval.views``, :mod:`experiments.inference.tiling`) holds every view of every image in one tensor and how many
belong to each (``batch["views"]``): :func:`score_views` scores them in one forward pass (in chunks of
:data:`MAX_CROPS_PER_FORWARD` crops) and pools them per image.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping

import torch

from experiments.evaluation.predictions import Predictions
from experiments.inference.loading import LoadedDetector
from experiments.process import progress

#: views scored per forward pass: a batch holding more (many views of large images) is scored in chunks
MAX_CROPS_PER_FORWARD = 256


def score_images(detector: LoadedDetector, images: torch.Tensor, calibrated: bool = False) -> torch.Tensor:
    """``(B,)`` P(synthetic) of a ``(B, 3, H, W)`` batch (uint8, or float in [0, 1]): raw, or after the training
    run's calibrator when ``calibrated`` (:meth:`LoadedDetector.predict_calibrated_proba`)."""
    probs = detector.predict_calibrated_proba(images) if calibrated else detector.predict_proba(images)
    return probs.reshape(-1)


def pool_views(scores: torch.Tensor, views: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """``(B,)`` per-image ``mean`` or ``max`` of ``(sum(views),)`` view scores, ``views[i]`` of them for image ``i``,
    in order."""
    views = torch.as_tensor(views, dtype=torch.long).reshape(-1)
    owner = torch.repeat_interleave(torch.arange(len(views)), views)
    scores = scores.reshape(-1).double()
    if len(owner) != len(scores):
        raise ValueError(f"pool_views: {len(scores)} scores for {int(views.sum())} views")
    if pooling == "mean":
        return torch.zeros(len(views), dtype=scores.dtype).index_add_(0, owner, scores).div_(views).float()
    if pooling == "max":
        out = torch.full((len(views),), -torch.inf, dtype=scores.dtype)
        return out.scatter_reduce_(0, owner, scores, "amax").float()
    raise ValueError(f"pool_views: pooling must be mean or max, not {pooling!r}")


def score_views(detector: LoadedDetector, images: torch.Tensor, views: torch.Tensor, pooling: str = "mean",
                calibrated: bool = False, max_crops: int = MAX_CROPS_PER_FORWARD) -> torch.Tensor:
    """``(B,)`` pooled raw P(synthetic) of images given as ``views[i]`` consecutive crops each, scored in one
    forward pass (chunks of ``max_crops``); the run's calibrator is applied to the pooled score when
    ``calibrated`` (it is increasing, so decisions are the same on both scales)."""
    raw = torch.cat([detector.predict_proba(chunk).reshape(-1).float() for chunk in images.split(max_crops)])
    pooled = pool_views(raw, views, pooling)
    # calibrated P stays float64, as predict_calibrated_proba: a steep calibrator separates scores float32 merges
    return torch.from_numpy(detector.calibrate(pooled.double().numpy())) if calibrated else pooled


def score_batch(detector: LoadedDetector, batch: Mapping, pooling: str = "mean") -> torch.Tensor:
    """``(B,)`` raw P(synthetic) of a loader's batch: one crop per image, or pooled views (``batch["views"]``)."""
    if batch.get("views") is None:
        return score_images(detector, batch["image"])
    return score_views(detector, batch["image"], batch["views"], pooling)


def readable_batches(loader: Iterable[Mapping], desc: str | None = None) -> Iterator[Mapping]:
    """The batches of ``loader`` that hold at least one readable image, with a progress bar when ``desc``."""
    batches = loader if desc is None else progress(loader, desc)
    return (batch for batch in batches if not batch.get("empty"))


def score_split(detector: LoadedDetector, loader: Iterable[Mapping], generator_names: list[str],
                desc: str = "evaluate: scoring", pooling: str = "mean",
                views_seen: Counter | None = None) -> Predictions:
    """P(synthetic) of every readable image of ``loader``, batch by batch, without gradients; an image of several
    views gets their ``pooling``. ``views_seen``, when given, counts the images by their number of views."""
    batches = []
    for b in readable_batches(loader, desc):
        batches.append({"prob": score_batch(detector, b, pooling), "label": b["label"],
                        "generator": b["generator"], "index": b["index"]})
        if views_seen is not None:
            views_seen.update([1] * len(b["label"]) if b.get("views") is None else b["views"].tolist())
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

    def __init__(self, detectors: Mapping[str, LoadedDetector], pooling: str = "mean") -> None:
        self.detectors = dict(detectors)
        self.pooling = pooling
        self._done: dict[tuple[Hashable, str], dict[str, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor, key: Hashable = (), views: torch.Tensor | None = None,
                 ) -> dict[str, torch.Tensor]:
        """``{label: (B,) P(synthetic)}`` of ``images`` for every detector: one per image, or ``views[i]``
        consecutive views of image ``i`` pooled."""
        digest = (key, tensor_digest(images) + ("" if views is None else tensor_digest(views)))
        if digest not in self._done:
            batch = {"image": images, "views": views}
            self._done[digest] = {label: score_batch(det, batch, self.pooling) for label, det in self.detectors.items()}
        return self._done[digest]

    def forget(self) -> None:
        """Drop the scores kept for reuse (between batches whose keys never repeat)."""
        self._done.clear()
