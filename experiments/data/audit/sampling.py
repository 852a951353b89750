"""How much of a dataset the data check reads: ``data.check=auto|full|sample:N|off``.

``auto`` (the default) checks every file below :data:`SAMPLE_ABOVE` images and a sample of
:data:`DEFAULT_SAMPLE` above; ``full`` every file; ``sample:N`` a stratified sample of N files; ``off`` none
(with a warning). The sample is stratified by ``(split, generator, class)`` with proportional allocation
(largest remainder, at least one file per stratum), drawn with NumPy's seeded generator per stratum, so the same
files are drawn on every run and machine. The duplicate check then covers the sampled files, and the share of
unusable files is an estimate from the sample, reported as such.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from experiments.data.layouts import Sample
from experiments.errors import UserError

#: ``data.check=auto`` samples datasets of at least this many images
SAMPLE_ABOVE = 200_000
#: files ``data.check=auto`` samples from a large dataset
DEFAULT_SAMPLE = 20_000
MODES = ("auto", "full", "sample:N", "off")


class BadCheckSetting(ValueError, UserError):
    """``data.check`` is not one of :data:`MODES`."""


@dataclass(frozen=True)
class DataCheck:
    """A parsed ``data.check``: ``mode`` is ``auto``, ``full``, ``sample`` (with ``n`` files) or ``off``."""

    mode: str = "auto"
    n: int = 0

    @classmethod
    def parse(cls, value: "str | DataCheck | None") -> "DataCheck":
        if isinstance(value, DataCheck):
            return value
        text = str(value or "auto").strip().lower()
        if text in ("auto", "full", "off"):
            return cls(text)
        if text.startswith("sample:"):
            count = text.split(":", 1)[1]
            if count.isdigit() and int(count) > 0:
                return cls("sample", int(count))
        raise BadCheckSetting(f"data.check={value!r} is not one of {', '.join(MODES)} (N > 0 files), "
                              f"e.g. data.check=sample:{DEFAULT_SAMPLE}")

    def resolve(self, n_images: int) -> tuple["DataCheck", str]:
        """The mode used on a dataset of ``n_images`` files (``auto`` decided) and why, for the log and report."""
        if self.mode == "auto":
            if n_images >= SAMPLE_ABOVE:
                return DataCheck("sample", DEFAULT_SAMPLE), (
                    f"data.check=auto: {n_images} images >= {SAMPLE_ABOVE}, so a stratified sample of "
                    f"{DEFAULT_SAMPLE} (data.check=full reads every file)")
            return DataCheck("full"), f"data.check=auto: {n_images} images < {SAMPLE_ABOVE}, so every file"
        if self.mode == "sample":
            if self.n >= n_images:
                return DataCheck("full"), f"data.check=sample:{self.n}: the dataset has {n_images} images, so every file"
            return self, f"data.check=sample:{self.n}: a stratified sample of {self.n} of {n_images} images"
        if self.mode == "full":
            return self, f"data.check=full: every one of {n_images} images"
        return self, "data.check=off: no file read"

    def __str__(self) -> str:
        return f"sample:{self.n}" if self.mode == "sample" else self.mode


def stratified_sample(jobs: Sequence[tuple[Sample, str]], n: int, seed: int = 0) -> list[int]:
    """Indices (sorted) of ``n`` of ``jobs`` (``(sample, split)`` pairs), stratified by ``(split, generator,
    label)``: each stratum gets its proportional share (largest remainder, at least one), drawn seeded per
    stratum from its files in the order given."""
    strata: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for i, (sample, split) in enumerate(jobs):
        strata[(split, sample.generator, sample.label)].append(i)
    if n >= len(jobs):
        return list(range(len(jobs)))
    keys = sorted(strata)
    sizes = np.array([len(strata[k]) for k in keys], dtype=np.float64)
    exact = sizes * n / sizes.sum()
    take = np.minimum(np.maximum(np.floor(exact), 1), sizes).astype(int)
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable"):  # largest remainder first
        if take.sum() >= n:
            break
        if take[i] < sizes[i]:
            take[i] += 1
    chosen: list[int] = []
    for key, k in zip(keys, take):
        rows = strata[key]
        rng = np.random.default_rng([seed, zlib.crc32(repr(key).encode())])
        chosen += [rows[j] for j in rng.choice(len(rows), size=int(k), replace=False)]
    return sorted(chosen)
