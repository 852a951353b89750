"""The seeded, stratified choices of a split: which generators a split keeps, the val hold-out of train and
the per-class cap.

Every seeded choice sorts the files of a (generator, label) stratum by the seeded hash of their
:attr:`~experiments.data.layouts.base.Sample.relpath`, the path relative to the dataset root: the same split
wherever the dataset or the clone lives, independent of file order and of the other strata.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

from experiments.data.layouts.base import Sample


@dataclass(frozen=True)
class Selection:
    """Which generators go into which split, and the seeded hold-out for layouts without a val folder.

    ``generators`` (None = all) are kept in train and val, minus ``exclude_generators``; ``test_generators``
    (None = ``generators``) in test. Without val samples, val is the ``val_fraction`` hold-out of train.
    """

    generators: Sequence[str] | None = None
    test_generators: Sequence[str] | None = None
    exclude_generators: frozenset[str] = frozenset()
    val_fraction: float = 0.1
    split_seed: int = 0

    @property
    def wanted(self) -> list[str] | None:
        """Every generator some split keeps (None = all)."""
        return sorted(set(self.generators or []) | set(self.test_generators or [])) or None

    def trains_on(self, sample: Sample) -> bool:
        """Whether ``sample`` belongs in train/val: among ``generators`` and not in ``exclude_generators``."""
        return among(sample, self.generators) and sample.generator not in self.exclude_generators

    def select(self, folders: dict[str, list[Sample]]) -> tuple[list[Sample], list[Sample], list[Sample]]:
        """Keep ``generators`` in train/val and ``test_generators`` in test; without val samples, val is the
        seeded hold-out of train (``val_fraction``, ``split_seed``)."""
        train = [s for s in folders["train"] if self.trains_on(s)]
        val = [s for s in folders["val"] if self.trains_on(s)]
        test = [s for s in folders["test"] if among(s, self.test_generators or self.generators)]
        if not folders["val"]:
            train, val = holdout_split(train, self.val_fraction, self.split_seed)
        return train, val, test


def among(sample: Sample, generators: Sequence[str] | None) -> bool:
    return generators is None or sample.generator in generators


def seeded_order(seed: int) -> Callable[[Sample], str]:
    """The sort key of :func:`holdout_split` and :func:`limit_per_class`: the seeded hash of a sample's
    :attr:`~experiments.data.layouts.base.Sample.split_name` (its path relative to the dataset root)."""

    def key(sample: Sample) -> str:
        return hashlib.sha1(f"{seed}:{sample.split_name}".encode()).hexdigest()

    return key


def _strata(samples: list[Sample]) -> dict[tuple[str, int], list[Sample]]:
    """``samples`` grouped by (generator, label), the strata of every seeded choice."""
    strata: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        strata[(s.generator, s.label)].append(s)
    return strata


def holdout_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Deterministic stratified hold-out: per (generator, label), the ``fraction`` of files with the smallest
    seeded hash of their relative path go to the second list. Independent of file order, of the other strata
    and of where the dataset lives."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {fraction}")
    strata, order = _strata(samples), seeded_order(seed)
    keep, held = [], []
    for key in sorted(strata):
        group = sorted(strata[key], key=order)
        n_held = max(1, round(len(group) * fraction)) if len(group) > 1 else 0
        held += group[:n_held]
        keep += group[n_held:]
    return sorted(keep, key=lambda s: s.path), sorted(held, key=lambda s: s.path)


def limit_per_class(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """Keep at most ``limit`` samples per (generator, label), chosen by the seeded hash of their relative path
    (the same choice wherever the dataset lives)."""
    if not limit:
        return samples
    strata, order = _strata(samples), seeded_order(seed)
    out = []
    for key in sorted(strata):
        out += sorted(strata[key], key=order)[:limit]
    return sorted(out, key=lambda s: s.path)
