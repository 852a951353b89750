"""Noise-residual statistics of groups of images, after Corvi et al. (2023).

Corvi, Cozzolino, Poggi, Nagano and Verdoliva (2023), "Intriguing properties of
synthetic images: from generative adversarial networks to diffusion models":
suppress the image content with a high-pass filter, then average over many images
the power spectrum and the autocorrelation of the noise residual; generator
up-sampling shows as peaks in the mean spectrum and a grid in the autocorrelation,
and the radial and angular spectral power distributions show the missing
mid/high-frequency content.

For every group (each class, each generator, each generator x class: :data:`GROUPINGS`)
a seeded random subset of at most ``max_images`` images is read and processed in batches:

* the grayscale Laplacian residual ``r`` (:class:`features.residual.LaplacianResidual`);
* its centred periodogram ``|F(r)|^2 / (H W)`` and its autocorrelation
  (:mod:`features.spectrum`), averaged over the group;
* the radial and angular power distributions (:class:`features.radial_angular.RadialAngularHistogram`,
  Nyquist disc) of the image spectrum (``profile_source="image"``) or of the residual's;
* the "statistics" step: mean, variance, skewness and (excess) kurtosis of the
  residual's pixel values, pooled over the group (population moments, as
  ``scipy.stats.skew``/``kurtosis`` with their defaults), and the peak-to-median ratio of
  the power spectrum with the DC term left out, for the group's mean spectrum and
  averaged over its images.

:func:`residual_statistics` returns ``{grouping: {group: stats}}``; :func:`write_statistics` and
:func:`save_profiles` write ``spectral_statistics.{md,csv}`` and ``spectral_profiles.npz``.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from experiments.data.dataset import ImageDataset, collate_skipping
from experiments.data.layouts import CLASS_NAMES, Sample
from experiments.process import progress
from features.precision import as_unit_float
from features.radial_angular import RadialAngularHistogram
from features.residual import LaplacianResidual
from features.spectrum import power_and_autocorrelation

log = logging.getLogger(__name__)

#: How the images are grouped: by class, by generator, and by generator x class.
GROUPINGS = ("class", "generator", "generator_class")
STATISTICS = ("mean", "variance", "skewness", "kurtosis", "peak_to_median", "peak_to_median_per_image")

#: Results of :func:`residual_statistics`: ``{grouping: {group key: arrays and statistics}}``.
Results = dict[str, dict[str, dict[str, Any]]]


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------
@dataclass
class MomentAccumulator:
    """Streaming mean, variance, skewness and kurtosis of many values, in float64.

    Chunks are combined with the pairwise update of Pébay (2008), "Formulas for robust,
    one-pass parallel computation of covariances and arbitrary-order statistical
    moments", so the result equals the moments of all values at once. ``variance`` is
    the population variance (``ddof=0``), ``skewness`` is ``m3 / m2**1.5`` and
    ``kurtosis`` the excess ``m4 / m2**2 - 3``: ``scipy.stats.skew`` and
    ``scipy.stats.kurtosis`` with their defaults (``bias=True``, ``fisher=True``).
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0

    def update(self, values: Any) -> "MomentAccumulator":
        """Add every element of ``values`` (tensor or array of any shape)."""
        if isinstance(values, torch.Tensor):
            x = values.detach().to("cpu", torch.float64).reshape(-1)
        else:
            x = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
        if x.numel() == 0:
            return self
        mean = float(x.mean())
        d = x - mean
        d2 = d * d
        chunk = MomentAccumulator(int(x.numel()), mean, float(d2.sum()), float((d2 * d).sum()), float((d2 * d2).sum()))
        return self.merge(chunk)

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        """Combine ``other`` into ``self`` in place (Pébay 2008, eqs. 2.1-2.3); returns ``self``."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = other.n, other.mean, other.m2, other.m3, other.m4
            return self
        na, nb = float(self.n), float(other.n)
        n = na + nb
        delta = other.mean - self.mean
        m2 = self.m2 + other.m2 + delta**2 * na * nb / n
        m3 = (self.m3 + other.m3 + delta**3 * na * nb * (na - nb) / n**2
              + 3.0 * delta * (na * other.m2 - nb * self.m2) / n)
        m4 = (self.m4 + other.m4 + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
              + 6.0 * delta**2 * (na * na * other.m2 + nb * nb * self.m2) / n**2
              + 4.0 * delta * (na * other.m3 - nb * self.m3) / n)
        self.n, self.mean, self.m2, self.m3, self.m4 = int(n), self.mean + delta * nb / n, m2, m3, m4
        return self

    @property
    def variance(self) -> float:
        return self.m2 / self.n if self.n else math.nan

    @property
    def skewness(self) -> float:
        if not self.n or self.m2 <= 0:
            return math.nan
        return math.sqrt(self.n) * self.m3 / self.m2**1.5

    @property
    def kurtosis(self) -> float:
        if not self.n or self.m2 <= 0:
            return math.nan
        return self.n * self.m4 / self.m2**2 - 3.0


def peak_to_median(power: torch.Tensor) -> torch.Tensor:
    """``max / median`` of centred power spectra ``(..., H, W)`` with the DC term (at ``(H//2, W//2)``) left out.

    A periodic trace (e.g. the checkerboard of transposed convolutions) concentrates
    power in a few frequencies and gives a large ratio; noise-like residuals give a
    small one.
    """
    h, w = power.shape[-2:]
    flat = power.reshape(*power.shape[:-2], h * w)
    keep = torch.ones(h * w, dtype=torch.bool, device=power.device)
    keep[(h // 2) * w + w // 2] = False
    flat = flat[..., keep]
    median = flat.median(dim=-1).values
    return flat.max(dim=-1).values / median.clamp_min(torch.finfo(flat.dtype).tiny)


# ---------------------------------------------------------------------------
# groups and accumulation
# ---------------------------------------------------------------------------
@dataclass
class Group:
    """One analysed group: its grouping (one of :data:`GROUPINGS`), key and picked samples."""

    grouping: str
    key: str
    generator: str | None
    label: int | None
    members: list[int]
    n: int = 0
    power: torch.Tensor | None = None
    autocorr: torch.Tensor | None = None
    profiles: torch.Tensor | None = None
    ptm_sum: float = 0.0
    moments: MomentAccumulator = field(default_factory=MomentAccumulator)

    def add(self, residual: torch.Tensor, power: torch.Tensor, acf: torch.Tensor, profiles: torch.Tensor,
            ptm: torch.Tensor) -> None:
        """Accumulate a batch of this group's images (``residual``/``power``/``acf``: ``(b, H, W)``)."""
        def plus(total, part):
            part = part.sum(dim=0)
            return part if total is None else total + part

        self.n += int(residual.shape[0])
        self.power = plus(self.power, power)
        self.autocorr = plus(self.autocorr, acf)
        self.profiles = plus(self.profiles, profiles)
        self.ptm_sum += float(ptm.sum())
        self.moments.update(residual)

    def result(self, n_radial: int) -> dict[str, Any]:
        """Means over the group's images, and its statistics."""
        if self.n == 0:
            raise ValueError(f"group {self.key!r} has no readable image")
        mean_power = self.power / self.n
        profiles = self.profiles / self.n
        return {
            "power_spectrum": mean_power.numpy(),
            "autocorrelation": (self.autocorr / self.n).numpy(),
            "radial": profiles[:n_radial].numpy(),
            "angular": profiles[n_radial:].numpy(),
            "n_images": self.n,
            "mean": self.moments.mean,
            "variance": self.moments.variance,
            "skewness": self.moments.skewness,
            "kurtosis": self.moments.kurtosis,
            "peak_to_median": float(peak_to_median(mean_power)),
            "peak_to_median_per_image": self.ptm_sum / self.n,
        }


def make_groups(samples: Sequence[Sample], max_images: int, seed: int = 0) -> list[Group]:
    """Class, generator and generator x class groups, each a seeded random subset of at most ``max_images``."""
    if max_images < 1:
        raise ValueError(f"task.max_images must be >= 1, got {max_images}")
    generators = sorted({s.generator for s in samples})
    labels = sorted({s.label for s in samples})
    specs: list[tuple[str, str, str | None, int | None]] = [("class", CLASS_NAMES[c], None, c) for c in labels]
    specs += [("generator", g, g, None) for g in generators]
    specs += [("generator_class", f"{g}/{CLASS_NAMES[c]}", g, c) for g in generators for c in labels]
    rng = np.random.default_rng(seed)
    groups = []
    for grouping, key, gen, label in specs:
        pool = [i for i, s in enumerate(samples)
                if (gen is None or s.generator == gen) and (label is None or s.label == label)]
        if not pool:
            continue
        if len(pool) > max_images:
            pool = sorted(rng.choice(pool, size=max_images, replace=False).tolist())
        groups.append(Group(grouping, key, gen, label, pool))
    return groups


class SpectralFeatures(torch.nn.Module):
    """Batch ``(B, 3, H, W)`` -> residual, periodogram, autocorrelation, radial+angular profiles, peak/median."""

    def __init__(self, n_radial: int = 64, n_angular: int = 64, profile_source: str = "image") -> None:
        super().__init__()
        if profile_source not in ("image", "residual"):
            raise ValueError(f"task.profile_source must be 'image' or 'residual', got {profile_source!r}")
        self.residual = LaplacianResidual(grayscale=True)
        self.profiles = RadialAngularHistogram(n_radial, n_angular, use_residual=profile_source == "residual")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        residual = self.residual(x)[:, 0].double()
        h, w = residual.shape[-2:]
        power, autocorr = power_and_autocorrelation(residual)
        power = power / (h * w)
        return residual, power, autocorr, self.profiles(x).double(), peak_to_median(power)


def accumulate(groups: list[Group], samples: Sequence[Sample], preprocess, generator_names: Sequence[str],
               features: SpectralFeatures, batch_size: int = 64, num_workers: int = 0) -> None:
    """Read every picked image once (in batches) and add it to each group that picked it."""
    union = sorted({i for g in groups for i in g.members})
    where = {sample_index: row for row, sample_index in enumerate(union)}
    membership = torch.zeros(len(union), len(groups), dtype=torch.bool)
    for column, group in enumerate(groups):
        membership[[where[i] for i in group.members], column] = True
    dataset = ImageDataset([samples[i] for i in union], preprocess, generator_names)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping)
    for batch in progress(loader, f"analyze: {len(union)} images"):
        if batch.get("empty"):
            continue
        outputs = features(as_unit_float(batch["image"]))
        member = membership[batch["index"]]
        for column, group in enumerate(groups):
            mask = member[:, column]
            if mask.any():
                group.add(*(o[mask] for o in outputs))


def residual_statistics(samples: Sequence[Sample], preprocess, generator_names: Sequence[str], *,
                        max_images: int, seed: int = 0, n_radial: int = 64, n_angular: int = 64,
                        profile_source: str = "image", batch_size: int = 64, num_workers: int = 0) -> Results:
    """Group ``samples`` (:func:`make_groups`), read the picked images once and return every group's means and
    statistics, ``{grouping: {group: stats}}``. A group without a readable image is left out with a warning."""
    groups = make_groups(samples, max_images, seed)
    features = SpectralFeatures(n_radial, n_angular, profile_source)
    accumulate(groups, samples, preprocess, generator_names, features, batch_size, num_workers)
    results: Results = {grouping: {} for grouping in GROUPINGS}
    for group in groups:
        if group.n == 0:
            log.warning("analyze: no readable image in group %s; left out", group.key)
            continue
        results[group.grouping][group.key] = {**group.result(n_radial), "generator": group.generator,
                                              "class": None if group.label is None else CLASS_NAMES[group.label]}
    return results


# ---------------------------------------------------------------------------
# tables and arrays
# ---------------------------------------------------------------------------
def statistics_rows(results: Results) -> list[dict[str, Any]]:
    """One flat row per group: its grouping (column ``kind``), group, generator, class, n_images and
    :data:`STATISTICS`."""
    return [{"kind": grouping, "group": key, "generator": stats["generator"] or "", "class": stats["class"] or "",
             "n_images": stats["n_images"], **{name: stats[name] for name in STATISTICS}}
            for grouping, groups in results.items() for key, stats in groups.items()]


def write_statistics(results: Results, out_dir: Path, title: str = "Noise-residual statistics") -> list[Path]:
    """``spectral_statistics.csv`` (full precision) and ``spectral_statistics.md`` (4 significant digits)."""
    rows = statistics_rows(results)
    columns = ["kind", "group", "generator", "class", "n_images", *STATISTICS]
    csv_path = Path(out_dir) / "spectral_statistics.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    md_path = Path(out_dir) / "spectral_statistics.md"
    lines = [f"# {title}", "",
             "Laplacian noise residual of [0, 1] grayscale images: pooled pixel moments (population variance, "
             "excess kurtosis) and peak-to-median ratio of the residual power spectrum without DC, for the "
             "group's mean spectrum and averaged over its images (Corvi et al., 2023).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return [md_path, csv_path]


def save_profiles(results: Results, path: Path) -> Path:
    """Every group's mean spectrum, autocorrelation and profiles, keyed ``<grouping>__<group>__<field>``."""
    arrays = {f"{grouping}__{key.replace('/', '_')}__{name}": np.asarray(stats[name])
              for grouping, groups in results.items() for key, stats in groups.items()
              for name in ("power_spectrum", "autocorrelation", "radial", "angular")}
    np.savez_compressed(path, **arrays)
    return path
