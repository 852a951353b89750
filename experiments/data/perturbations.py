"""Deterministic image perturbations for out-of-distribution (OOD) stress tests.

Every perturbation works on decoded images, float ``(B, 3, H, W)`` in [0, 1]. In
``task=ood_stress`` (``ood.order``) they are applied in deployment order by default
(``before_preprocessing``): to each decoded file at its native size, as a re-saved,
resized, blurred or noisy image would reach a detector (:func:`perturb_image`), and
then each detector's own preprocessing (equalizer, resize, crop) runs on the result.
``after_preprocessing`` keeps the older order, on the preprocessed (equalized,
cropped) batches, where every detector sharing a preprocessing sees the same tensors.

The grid follows the robustness protocols of the field:

- additive Gaussian noise: the kind of OOD stress test SPECTRAFORGE reports
  ("Domain-Equalized Frequency-Spatial Fusion for Synthetic Dermatology
  Detection": noise injection). Its write-up gives no noise levels; the
  sigmas in ``conf/ood`` ({0, 2, 5, 10, 20} / 255) are the suite's choice;
- JPEG re-compression and Gaussian blur: the post-processing robustness study
  of CNNDetection (Wang et al. 2020, "CNN-generated images are surprisingly
  easy to spot... for now", Fig. 5), which also motivates the combined
  JPEG + blur setting;
- down-scaling and up-scaling back, which wipes out the high-frequency
  up-sampling traces that spectral detectors rely on.

The pixel operations themselves are :mod:`experiments.data.degradations`; this module turns them into the grid
(one :class:`PerturbationKind` class per kind, its points, their metric names) and applies it deterministically.

Determinism: :func:`apply` draws the randomness of a stochastic perturbation
(noise) from a fresh ``torch.Generator`` per image, seeded by a SHA-256 hash of
``(seed, perturbation name, strength label, sample id)`` (or ``(seed, name,
label, batch index, row)`` when no sample ids are given). It never touches the
global RNG, and the noise is drawn on the CPU and then moved to the input's
device. The noise an image receives therefore does not depend on the batch it
sits in, on the order of batches, on the device, or on which detector was
evaluated first.

Config shape (``conf/ood/*.yaml``), one entry per perturbation name, each a :class:`PerturbationKind` chosen
by ``_target_`` with its strengths::

    perturbations:
      noise:                      # name used in metric keys: ood/noise/s5/auc
        _target_: experiments.data.perturbations.GaussianNoise   # | JPEG | GaussianBlur | Downscale | Compose
        strengths: [0, 2, 5, 10]
      jpeg_blur:
        _target_: experiments.data.perturbations.Compose
        steps:                         # applied left to right
          - _target_: experiments.data.perturbations.JPEG
          - _target_: experiments.data.perturbations.GaussianBlur
        strengths: [[50, 2]]           # one value per step

See :func:`perturbation_grid` and :func:`metric_prefix`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from experiments.data.degradations import (
    PerturbationFn,
    check_images,
    check_quality,
    to_uint8_hwc,
    compose,
    downscale,
    encode_jpeg,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    jpeg_roundtrip_pil,
)

__all__ = ["Compose", "Downscale", "GaussianBlur", "GaussianNoise", "JPEG", "ORDERS", "Perturbation",
           "PerturbationFn", "PerturbationKind", "apply", "compose", "downscale", "encode_jpeg", "gaussian_blur",
           "gaussian_noise", "jpeg", "jpeg_roundtrip_pil", "metric_prefix", "perturb_image", "perturbation_generator",
           "perturbation_grid", "perturbation_order"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


# -- kinds: each a class, chosen in conf/ood by _target_ ---------------------------------------------
def _format_number(value: float) -> str:
    """2.0 -> '2', 0.75 -> '0.75' (MLflow-safe: digits, '.', '-', 'e')."""
    value = float(value)
    return str(int(value)) if value.is_integer() else format(value, "g")


def _check_number(what: str, strength: Any) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ValueError(f"{what}: strength must be a number, got {strength!r}")


class PerturbationKind:
    """A kind of perturbation and the strengths of the grid it is evaluated at (one entry of ``conf/ood``).

    A subclass says how one strength becomes a step (:meth:`step`), how that strength is written in metric
    names (``prefix`` + the number: ``s5``, ``q50``, ``x0.75``), whether the step draws noise
    (``stochastic``) and what the robustness curve's x axis shows (``axis``). ``ordinal`` kinds (the laundering
    chains of :mod:`experiments.data.laundering`) have named levels, drawn at their positions; ``changes_size``
    kinds change the image size, so they run on decoded files only (``ood.order: before_preprocessing``).
    """

    prefix: str = ""
    stochastic: bool = False
    axis: str = "strength"
    ordinal: bool = False
    changes_size: bool = False

    def __init__(self, strengths: Sequence[Any] = ()) -> None:
        self.strengths = list(strengths)

    def validate(self, strength: Any) -> Any:
        """``strength``, checked: a number (subclasses check its range); raises ``ValueError``."""
        _check_number(type(self).__name__, strength)
        return strength

    def step(self, strength: Any) -> PerturbationFn:
        """``fn(x, generator) -> x`` at ``strength`` (already validated)."""
        raise NotImplementedError

    def label(self, strength: Any) -> str:
        """The MLflow-safe name of ``strength``, e.g. ``"q50"``."""
        return f"{self.prefix}{_format_number(strength)}"

    def axis_label(self, points: Sequence["Perturbation"]) -> str:
        """The x axis of this kind's robustness curve over ``points``."""
        return self.axis

    def at(self, name: str, strength: Any) -> "Perturbation":
        """The grid point ``name`` at ``strength``."""
        if not _SAFE_NAME.match(name):
            raise ValueError(
                f"perturbation name {name!r} must match {_SAFE_NAME.pattern} (it becomes part of metric names)"
            )
        value = self.validate(strength)
        return Perturbation(name=name, strength=value, fn=self.step(value), label=self.label(value),
                            stochastic=self.stochastic, kind=self)

    def points(self, name: str) -> list["Perturbation"]:
        """One :class:`Perturbation` per strength, in order; raises on none or on duplicates."""
        if not self.strengths:
            raise ValueError(f"ood.perturbations.{name} needs a non-empty `strengths` list")
        points = [self.at(name, s) for s in self.strengths]
        labels = [p.label for p in points]
        if len(set(labels)) != len(labels):
            raise ValueError(f"ood.perturbations.{name} has duplicate strengths: {labels}")
        return points


class GaussianNoise(PerturbationKind):
    """Additive Gaussian noise, sigma on the 0-255 scale (label ``s<sigma>``); the noise injection of
    SPECTRAFORGE's OOD stress test (:func:`gaussian_noise`)."""

    prefix, stochastic, axis = "s", True, "noise sigma (0-255 scale)"

    def validate(self, strength: Any) -> Any:
        _check_number("gaussian_noise", strength)
        if strength < 0:
            raise ValueError(f"gaussian_noise: sigma must be >= 0, got {strength}")
        return strength

    def step(self, strength: Any) -> PerturbationFn:
        return lambda x, g: gaussian_noise(x, strength, g)


class JPEG(PerturbationKind):
    """JPEG re-compression at a quality in [1, 100] (label ``q<quality>``), as in CNNDetection (Wang et al.
    2020, Fig. 5) (:func:`jpeg`)."""

    prefix, axis = "q", "JPEG quality"

    def validate(self, strength: Any) -> Any:
        _check_number("jpeg", strength)
        check_quality(strength)
        return strength

    def step(self, strength: Any) -> PerturbationFn:
        return lambda x, g: jpeg(x, int(strength))


class GaussianBlur(PerturbationKind):
    """Gaussian blur, sigma in pixels (label ``s<sigma>``), as in CNNDetection (Wang et al. 2020)
    (:func:`gaussian_blur`)."""

    prefix, axis = "s", "blur sigma (px)"

    def validate(self, strength: Any) -> Any:
        _check_number("gaussian_blur", strength)
        if strength < 0:
            raise ValueError(f"gaussian_blur: sigma must be >= 0, got {strength}")
        return strength

    def step(self, strength: Any) -> PerturbationFn:
        return lambda x, g: gaussian_blur(x, strength)


class Downscale(PerturbationKind):
    """Down-scaling by a factor in (0, 1] and back up (label ``x<scale>``) (:func:`downscale`)."""

    prefix, axis = "x", "scale factor"

    def validate(self, strength: Any) -> Any:
        _check_number("downscale", strength)
        if not 0 < strength <= 1:
            raise ValueError(f"downscale: scale must be in (0, 1], got {strength}")
        return strength

    def step(self, strength: Any) -> PerturbationFn:
        return lambda x, g: downscale(x, strength)


class Compose(PerturbationKind):
    """``steps`` applied left to right (e.g. JPEG 50, then blur sigma 2: CNNDetection's combined setting);
    each strength has one value per step, and its label joins the steps' labels (``q50_s2``)."""

    def __init__(self, steps: Sequence[PerturbationKind] = (), strengths: Sequence[Any] = ()) -> None:
        super().__init__(strengths)
        self.steps = list(steps)
        if not self.steps:
            raise ValueError("Compose needs a non-empty `steps` list of perturbation kinds")
        bad = [s for s in self.steps if not isinstance(s, PerturbationKind) or isinstance(s, Compose)]
        if bad:
            raise ValueError(f"Compose steps must be perturbation kinds (a _target_ each), got {bad}")
        self.stochastic = any(s.stochastic for s in self.steps)

    def validate(self, strength: Any) -> tuple:
        if isinstance(strength, (str, bytes)) or not isinstance(strength, Sequence) \
                or len(strength) != len(self.steps):
            names = [type(s).__name__ for s in self.steps]
            raise ValueError(f"each compose strength needs one value per step {names}, got {strength!r}")
        return tuple(step.validate(s) for step, s in zip(self.steps, strength))

    def step(self, strength: tuple) -> PerturbationFn:
        return compose(*(step.step(s) for step, s in zip(self.steps, strength)))

    def label(self, strength: tuple) -> str:
        return "_".join(step.label(s) for step, s in zip(self.steps, strength))

    def axis_label(self, points: Sequence["Perturbation"]) -> str:
        return "setting: " + ", ".join(f"{i}={p.label}" for i, p in enumerate(points))


@dataclass(frozen=True)
class Perturbation:
    """One point of the OOD grid: a named perturbation at one strength.

    Attributes:
        name: the config entry's name (e.g. ``"jpeg"``), the second part of the metric key.
        strength: the raw strength (a tuple with one value per step for :class:`Compose`).
        fn: ``fn(x, generator) -> x`` on a float ``(B, 3, H, W)`` batch in [0, 1].
        label: MLflow-safe strength (``"q50"``, ``"s5"``, ``"x0.5"``, ``"q50_s2"``).
        stochastic: whether ``fn`` uses its generator (see :func:`apply`).
        kind: the :class:`PerturbationKind` it is a point of.
    """

    name: str
    strength: float | tuple[float, ...]
    fn: PerturbationFn = field(compare=False, repr=False)
    label: str = ""
    stochastic: bool = False
    kind: PerturbationKind | None = field(default=None, compare=False, repr=False)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.fn(x, generator)

    @property
    def key(self) -> str:
        """``"<name>/<label>"``, e.g. ``"jpeg/q50"``."""
        return f"{self.name}/{self.label}"


def perturbation_grid(perturbations: Mapping[str, PerturbationKind]) -> list[Perturbation]:
    """Every (perturbation, strength) pair, in order: ``perturbations`` maps a name to its kind, as
    ``instantiate(cfg.ood.perturbations)`` gives them (see the module docstring for the config shape)."""
    if not isinstance(perturbations, Mapping) or not perturbations:
        raise ValueError("the ood config needs a `perturbations` mapping: {name: {_target_: ..., strengths: [...]}}")
    grid: list[Perturbation] = []
    for name, kind in perturbations.items():
        if not isinstance(kind, PerturbationKind):
            raise ValueError(f"ood.perturbations.{name}: unknown kind {kind!r}; give a `_target_` to a "
                             f"PerturbationKind of {__name__} (GaussianNoise, JPEG, GaussianBlur, Downscale, Compose) or "
                             "of experiments.data.laundering (Reshare, WebP, Screenshot, Crop, Greyscale)")
        grid.extend(kind.points(str(name)))
    return grid


def metric_prefix(perturbation: Perturbation) -> str:
    """``"ood/<name>/<label>"``, e.g. ``"ood/jpeg/q50"``; append ``"/auc"`` etc. for metric names."""
    return f"ood/{perturbation.key}"


#: ``ood.order`` values: perturb the decoded file, then preprocess (deployment order, the default), or perturb
#: the preprocessed batch (after the equalizer, resize and crop).
ORDERS: tuple[str, ...] = ("before_preprocessing", "after_preprocessing")


def perturbation_order(order: str | None = None) -> str:
    """``ood.order`` (default ``before_preprocessing``), checked against :data:`ORDERS`."""
    order = order or ORDERS[0]
    if order not in ORDERS:
        raise ValueError(f"ood.order={order!r} is not supported; choose one of {ORDERS} "
                         "(before_preprocessing perturbs the image file as deployed, then preprocesses)")
    return str(order)


# -- deterministic application -----------------------------------------------------------------------
def perturbation_generator(seed: int, perturbation: Perturbation, *key: Any) -> torch.Generator:
    """CPU generator seeded from a SHA-256 hash of ``(seed, name, label, *key)``.

    ``hashlib`` (not Python's salted ``hash``) keeps the seed stable across processes.
    """
    text = "|".join(str(part) for part in (seed, perturbation.name, perturbation.label, *key))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def apply(
    x: torch.Tensor,
    perturbation: Perturbation,
    seed: int,
    sample_ids: Iterable[int] | torch.Tensor | None = None,
    batch_index: int = 0,
) -> torch.Tensor:
    """Apply ``perturbation`` to a batch, deterministically given ``seed``.

    Deterministic perturbations (JPEG, blur, down-scaling) run on the whole
    batch. Stochastic ones (noise) run image by image, each with its own
    generator from :func:`perturbation_generator`, keyed by the image's
    ``sample_ids`` entry (e.g. its dataset index) when given, else by
    ``(batch_index, row)``. With sample ids the result for an image does not
    depend on the batch composition or order; with batch indices it does not
    depend on the order in which batches (or detectors) are processed.
    """
    check_images(x, "apply")
    if not perturbation.stochastic:
        return perturbation(x, None)
    if sample_ids is None:
        keys = [("batch", int(batch_index), row) for row in range(x.shape[0])]
    else:
        ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
        if len(ids) != x.shape[0]:
            raise ValueError(f"apply: got {len(ids)} sample_ids for a batch of {x.shape[0]} images")
        keys = [("sample", int(i)) for i in ids]
    rows = [
        perturbation(x[row : row + 1], perturbation_generator(seed, perturbation, *key))
        for row, key in enumerate(keys)
    ]
    return torch.cat(rows)


def perturb_image(image: Image.Image, perturbation: Perturbation, seed: int, sample_id: int) -> Image.Image:
    """Perturb one decoded file (PIL, native size) before any preprocessing, as deployment would: the image goes
    to float [0, 1], through :func:`apply` with its own ``sample_id`` (so its noise is seeded per image, as in
    the batch order) and back to an 8-bit RGB PIL image, which the detector's preprocessing then receives."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    x = x.unsqueeze(0).float().div_(255.0)
    out = apply(x, perturbation, seed, sample_ids=[int(sample_id)])[0]
    return Image.fromarray(to_uint8_hwc(out))
