"""The chronological protocol: train on the generators released first, test on those released later.

AI-GenBench (Pellegrini et al., 2025, "AI-GenBench: A New Ongoing Benchmark for AI-Generated Image Detection")
orders the generators by release date and asks how a detector trained on the older ones fares on the newer
ones. Here, with a release order ``order`` (oldest first) and ``k``:

* the detector trains (and is validated) on ``order[:k]``, "trained up to ``order[k - 1]``";
* it is tested on every later generator, ``order[k:]``, read in test windows of ``window`` generators:
  window ``w`` (0, 1, ...) holds ``order[k + w * window : k + (w + 1) * window]`` (the last may be shorter).
  With ``window=1`` (the default) there is one window per later generator.

A sweep over ``k`` (``python run.py -m experiment=chronological chronological.k=1,2``) gives one training run
per training horizon. The order is given (``data.generator_order``) or read from a manifest's optional ``date``
column (:func:`order_from_dates`: each generator dated by its earliest synthetic image). Everything is pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from experiments.errors import UserError

#: the ``train_generator`` tag of a chronological run: trained on the generators up to this one
TRAIN_TAG_PREFIX = "upto_"


class ChronologyError(ValueError, UserError):
    """A release order or a ``k`` the chronological protocol cannot use."""


@dataclass(frozen=True)
class Chronology:
    """A release order (oldest first) and the number ``k`` of generators trained on."""

    order: tuple[str, ...]
    k: int

    def __post_init__(self) -> None:
        order = tuple(str(g) for g in self.order)
        object.__setattr__(self, "order", order)
        if len(set(order)) != len(order):
            raise ChronologyError(f"data.generator_order={list(order)} names a generator twice")
        if not 1 <= int(self.k) < len(order):
            raise ChronologyError(
                f"chronological.k={self.k}: train on the first k of the {len(order)} generators of "
                f"data.generator_order={list(order)}, so 1 <= k <= {len(order) - 1} (at least one generator "
                f"must be left to test on)")

    @property
    def train(self) -> list[str]:
        """The generators trained and validated on: the first ``k`` released."""
        return list(self.order[:self.k])

    @property
    def later(self) -> list[str]:
        """The generators tested on: every one released after the training horizon."""
        return list(self.order[self.k:])

    @property
    def horizon(self) -> str:
        """The newest generator trained on."""
        return self.order[self.k - 1]

    def windows(self, size: int = 1) -> list[list[str]]:
        """The test windows of ``size`` generators (:func:`later_windows`)."""
        return later_windows(self.order, self.k, size)

    def tags(self) -> dict[str, str]:
        """The run tags task=cross_generator reads: ``train_generator=upto_<horizon>``, the order and ``k``."""
        return {"train_generator": f"{TRAIN_TAG_PREFIX}{self.horizon}", "generator_order": ",".join(self.order),
                "chronological_k": str(self.k)}


def later_windows(order: Sequence[str], k: int, size: int = 1) -> list[list[str]]:
    """Window ``w`` = ``order[k + w * size : k + (w + 1) * size]``, for every later generator (the last window
    may be shorter); ``order`` oldest first, ``k`` the generators trained on."""
    if int(size) < 1:
        raise ChronologyError(f"chronological.window={size}: a test window holds at least one generator")
    later = list(Chronology(tuple(order), int(k)).later)
    return [later[i:i + int(size)] for i in range(0, len(later), int(size))]


def parse_date(text: str) -> dt.date:
    """An ISO 8601 date (``2022-08-22``; a time after it is ignored), a year-month (``2022-08``) or a year."""
    text = text.strip()
    fill = {4: "-01-01", 7: "-01"}.get(len(text), "")
    try:
        return dt.date.fromisoformat(text[:10] + fill)
    except ValueError:
        raise ChronologyError(f"'{text}' is not a date (YYYY-MM-DD, YYYY-MM or YYYY)") from None


def order_from_dates(dated: Iterable[tuple[str, str]]) -> list[str]:
    """The release order of ``(generator, date)`` pairs (the synthetic images' dates): each generator dated by its
    earliest image, oldest first, ties by name. Empty dates are skipped; a generator without any is an error."""
    first: dict[str, dt.date | None] = {}
    for generator, text in dated:
        first.setdefault(generator, None)
        if text and text.strip():
            date = parse_date(text)
            if first[generator] is None or date < first[generator]:
                first[generator] = date
    undated = sorted(g for g, d in first.items() if d is None)
    if undated:
        raise ChronologyError(f"the generator(s) {undated} have no dated synthetic image: fill the manifest's date "
                              f"column for them, or give the order with data.generator_order=[...]")
    return sorted(first, key=lambda g: (first[g], g))
