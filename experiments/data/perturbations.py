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

Determinism: :func:`apply` draws the randomness of a stochastic perturbation
(noise) from a fresh ``torch.Generator`` per image, seeded by a SHA-256 hash of
``(seed, perturbation name, strength label, sample id)`` (or ``(seed, name,
label, batch index, row)`` when no sample ids are given). It never touches the
global RNG, and the noise is drawn on the CPU and then moved to the input's
device. The noise an image receives therefore does not depend on the batch it
sits in, on the order of batches, on the device, or on which detector was
evaluated first.

Config shape (``conf/ood/*.yaml``), one entry per perturbation name::

    perturbations:
      noise:                      # name used in metric keys: ood/noise/s5/auc
        kind: gaussian_noise      # gaussian_noise | jpeg | gaussian_blur | downscale | compose
        strengths: [0, 2, 5, 10]
      jpeg_blur:
        kind: compose
        steps: [jpeg, gaussian_blur]   # applied left to right
        strengths: [[50, 2]]           # one value per step

See :func:`perturbation_grid` and :func:`metric_prefix`.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from features.bottleneck import GaussianBottleneck
from features.equalizer import JPEG_SUBSAMPLING

#: ``fn(x, generator) -> x``: a perturbation step; ``generator`` is ignored by deterministic steps.
PerturbationFn = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


# -- single perturbations ---------------------------------------------------------------------------
def _check_images(x: torch.Tensor, what: str) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{what} expects a float (B, C, H, W) batch in [0, 1], got {x.dtype} {tuple(x.shape)}")


def gaussian_noise(x: torch.Tensor, sigma255: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add ``N(0, (sigma255 / 255)^2)`` noise to every pixel and clamp to [0, 1].

    The kind of OOD stress test SPECTRAFORGE reports (noise injection; the
    levels are the suite's, SPECTRAFORGE states none). ``sigma255`` is on the 8-bit scale
    (``sigma255=5`` means 5 grey levels). The noise is drawn in float32 on the
    generator's device (CPU when ``generator`` is None, from the global RNG) and
    then moved to ``x``'s device and dtype. Clamping to [0, 1] makes the
    effective noise std slightly lower than ``sigma255 / 255`` for pixels near
    0 or 1 (half-normal folding); on mid-grey it is exact to within sampling
    error. ``sigma255=0`` returns ``x`` unchanged.
    """
    _check_images(x, "gaussian_noise")
    if sigma255 < 0:
        raise ValueError(f"gaussian_noise: sigma255 must be >= 0, got {sigma255}")
    if sigma255 == 0:
        return x
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return (x + noise.to(device=x.device, dtype=x.dtype) * (sigma255 / 255.0)).clamp_(0.0, 1.0)


def _to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def encode_jpeg(image: torch.Tensor, quality: int) -> bytes:
    """One ``(3, H, W)`` float image in [0, 1] -> JPEG bytes (PIL/libjpeg, 4:2:0 chroma subsampling).

    The image is first rounded to 8 bits. Uses the same encoder settings as
    ``features.equalizer.ExtremeEqualizer`` so the suite has one JPEG path.
    """
    _check_quality(quality)
    buffer = io.BytesIO()
    pil = Image.fromarray(_to_uint8_hwc(image))
    pil.save(buffer, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING)
    return buffer.getvalue()


def jpeg_roundtrip_pil(image: Image.Image, quality: int) -> Image.Image:
    """PIL image -> JPEG at ``quality`` in memory -> decoded PIL RGB image."""
    _check_quality(quality)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _check_quality(quality: int) -> None:
    if int(quality) != quality or not 1 <= quality <= 100:
        raise ValueError(f"jpeg quality must be an int in [1, 100], got {quality!r}")


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode every image of the batch as JPEG at ``quality`` and decode it again.

    A real libjpeg round trip (see :func:`encode_jpeg`), so 8x8 block artefacts
    and chroma subsampling are those of real files; ``quality=100`` still
    re-encodes (4:2:0 subsampling and rounding make it slightly lossy). The
    output lies on the 8-bit grid, on ``x``'s device and dtype.
    """
    _check_images(x, "jpeg")
    _check_quality(quality)
    if x.shape[1] != 3:
        raise ValueError(f"jpeg expects RGB images (B, 3, H, W), got {tuple(x.shape)}")
    decoded = []
    for image in x:
        with Image.open(io.BytesIO(encode_jpeg(image, quality))) as img:
            decoded.append(torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()))
    out = torch.stack(decoded).permute(0, 3, 1, 2).float().div_(255.0)
    return out.to(device=x.device, dtype=x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels; ``sigma=0`` returns ``x`` unchanged.

    Uses ``features.bottleneck.GaussianBottleneck`` (separable kernel of
    ``2 * ceil(3 sigma) + 1`` taps, reflect padding), the suite's one blur.
    """
    _check_images(x, "gaussian_blur")
    if sigma < 0:
        raise ValueError(f"gaussian_blur: sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x
    return GaussianBottleneck(sigma=float(sigma), in_chans=x.shape[1]).to(x.device)(x)


def downscale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize by ``scale`` (bilinear, antialiased) and back up to the input size (bilinear).

    Frequencies above ``scale`` times the Nyquist frequency are removed, which
    erases high-frequency generator traces while keeping the image size the
    detector expects. ``scale=1.0`` returns ``x`` unchanged; ``scale`` must lie
    in (0, 1].
    """
    _check_images(x, "downscale")
    if not 0 < scale <= 1:
        raise ValueError(f"downscale: scale must be in (0, 1], got {scale}")
    if scale == 1:
        return x
    height, width = x.shape[-2:]
    small_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = F.interpolate(x, size=small_size, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def compose(*steps: PerturbationFn) -> PerturbationFn:
    """Chain perturbation steps ``fn(x, generator)`` left to right (e.g. JPEG 50, then blur sigma 2).

    All steps share the one generator, in order, so the result is deterministic.
    """

    def composed(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for step in steps:
            x = step(x, generator)
        return x

    return composed


# -- kinds: how a config entry becomes a step --------------------------------------------------------
def _format_number(value: float) -> str:
    """2.0 -> '2', 0.75 -> '0.75' (MLflow-safe: digits, '.', '-', 'e')."""
    value = float(value)
    return str(int(value)) if value.is_integer() else format(value, "g")


@dataclass(frozen=True)
class _Kind:
    step: Callable[[float], PerturbationFn]
    label: Callable[[float], str]
    stochastic: bool


_KINDS: dict[str, _Kind] = {
    "gaussian_noise": _Kind(
        step=lambda s: (lambda x, g: gaussian_noise(x, s, g)),
        label=lambda s: f"s{_format_number(s)}",
        stochastic=True,
    ),
    "jpeg": _Kind(
        step=lambda q: (lambda x, g: jpeg(x, int(q))),
        label=lambda q: f"q{_format_number(q)}",
        stochastic=False,
    ),
    "gaussian_blur": _Kind(
        step=lambda s: (lambda x, g: gaussian_blur(x, s)),
        label=lambda s: f"s{_format_number(s)}",
        stochastic=False,
    ),
    "downscale": _Kind(
        step=lambda s: (lambda x, g: downscale(x, s)),
        label=lambda s: f"x{_format_number(s)}",
        stochastic=False,
    ),
}
#: Perturbation kinds accepted in ``conf/ood`` (plus ``compose``, which chains these).
KINDS: tuple[str, ...] = tuple(_KINDS)


def _validate_strength(kind: str, strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ValueError(f"{kind}: strength must be a number, got {strength!r}")
    if kind == "jpeg":
        _check_quality(strength)
    elif kind == "downscale" and not 0 < strength <= 1:
        raise ValueError(f"downscale: scale must be in (0, 1], got {strength}")
    elif kind in ("gaussian_noise", "gaussian_blur") and strength < 0:
        raise ValueError(f"{kind}: sigma must be >= 0, got {strength}")
    return strength


@dataclass(frozen=True)
class Perturbation:
    """One point of the OOD grid: a named perturbation at one strength.

    Attributes:
        name: the config entry's name (e.g. ``"jpeg"``), the second part of the metric key.
        strength: the raw strength (a tuple with one value per step for ``compose``).
        fn: ``fn(x, generator) -> x`` on a float ``(B, 3, H, W)`` batch in [0, 1].
        label: MLflow-safe strength (``"q50"``, ``"s5"``, ``"x0.5"``, ``"q50_s2"``).
        stochastic: whether ``fn`` uses its generator (see :func:`apply`).
    """

    name: str
    strength: float | tuple[float, ...]
    fn: PerturbationFn = field(compare=False, repr=False)
    label: str = ""
    stochastic: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.fn(x, generator)

    @property
    def key(self) -> str:
        """``"<name>/<label>"``, e.g. ``"jpeg/q50"``."""
        return f"{self.name}/{self.label}"


def make_perturbation(name: str, kind: str, strength: Any, steps: Sequence[str] | None = None) -> Perturbation:
    """Build one :class:`Perturbation` from a kind (or ``compose`` with ``steps``) and a strength."""
    if not _SAFE_NAME.match(name):
        raise ValueError(
            f"perturbation name {name!r} must match {_SAFE_NAME.pattern} (it becomes part of metric names)"
        )
    if kind == "compose":
        if not steps:
            raise ValueError(f"perturbation {name!r}: kind 'compose' needs a non-empty `steps` list of kinds")
        unknown = [s for s in steps if s not in _KINDS]
        if unknown:
            raise ValueError(f"perturbation {name!r}: unknown steps {unknown}; choose from {KINDS}")
        if not isinstance(strength, (list, tuple)) or len(strength) != len(steps):
            raise ValueError(
                f"perturbation {name!r}: each compose strength needs one value per step {list(steps)}, got {strength!r}"
            )
        values = tuple(_validate_strength(k, s) for k, s in zip(steps, strength))
        return Perturbation(
            name=name,
            strength=values,
            fn=compose(*(_KINDS[k].step(s) for k, s in zip(steps, values))),
            label="_".join(_KINDS[k].label(s) for k, s in zip(steps, values)),
            stochastic=any(_KINDS[k].stochastic for k in steps),
        )
    if kind not in _KINDS:
        raise ValueError(f"perturbation {name!r}: unknown kind {kind!r}; choose from {KINDS + ('compose',)}")
    if steps:
        raise ValueError(f"perturbation {name!r}: `steps` is only allowed with kind 'compose'")
    value = _validate_strength(kind, strength)
    spec = _KINDS[kind]
    return Perturbation(
        name=name, strength=value, fn=spec.step(value), label=spec.label(value), stochastic=spec.stochastic
    )


def perturbation_grid(cfg_ood: DictConfig | Mapping[str, Any]) -> list[Perturbation]:
    """Every (perturbation, strength) pair of an ``ood`` config, in config order.

    ``cfg_ood`` is the ``ood`` node (a ``DictConfig`` or plain mapping) with a
    ``perturbations`` mapping ``name -> {kind, strengths[, steps]}``; see the
    module docstring for the shape.
    """
    if isinstance(cfg_ood, DictConfig):
        cfg_ood = OmegaConf.to_container(cfg_ood, resolve=True)
    if not isinstance(cfg_ood, Mapping) or not isinstance(cfg_ood.get("perturbations"), Mapping):
        raise ValueError("the ood config needs a `perturbations` mapping: {name: {kind: ..., strengths: [...]}}")
    grid: list[Perturbation] = []
    for name, entry in cfg_ood["perturbations"].items():
        if not isinstance(entry, Mapping) or "kind" not in entry or not entry.get("strengths"):
            raise ValueError(f"ood.perturbations.{name} needs `kind` and a non-empty `strengths` list, got {entry!r}")
        points = [make_perturbation(str(name), entry["kind"], s, entry.get("steps")) for s in entry["strengths"]]
        labels = [p.label for p in points]
        if len(set(labels)) != len(labels):
            raise ValueError(f"ood.perturbations.{name} has duplicate strengths: {labels}")
        grid.extend(points)
    return grid


def metric_prefix(perturbation: Perturbation) -> str:
    """``"ood/<name>/<label>"``, e.g. ``"ood/jpeg/q50"``; append ``"/auc"`` etc. for metric names."""
    return f"ood/{perturbation.key}"


#: ``ood.order`` values: perturb the decoded file, then preprocess (deployment order, the default), or perturb
#: the preprocessed batch (after the equalizer, resize and crop).
ORDERS: tuple[str, ...] = ("before_preprocessing", "after_preprocessing")


def perturbation_order(cfg_ood: DictConfig | Mapping[str, Any]) -> str:
    """``ood.order`` (default ``before_preprocessing``), checked against :data:`ORDERS`."""
    order = cfg_ood.get("order") or ORDERS[0]
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
    _check_images(x, "apply")
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
    return Image.fromarray(_to_uint8_hwc(out))
