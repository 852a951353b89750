"""What every benchmark row is and how it is timed: :class:`Row`, peak RSS, and best-of timings taken in
alternation, so that a slow spell of a shared machine falls on every contender alike."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Row:
    section: str
    name: str
    impl: str
    images_per_s: float
    size: int
    batch: int
    speedup: float = float("nan")
    max_rel_err: float = float("nan")
    peak_rss_mb: float = float("nan")
    cuda_max_alloc_mb: float = float("nan")
    note: str = ""


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def best_times_interleaved(fns: list[Callable[[], object]], repeats: int, min_total: float = 0.5,
                           max_rounds: int = 100, warmup: int = 1) -> list[float]:
    """Fastest call of each of ``fns``, timed in alternation (one call of each per round) so that a slow
    spell of a shared machine falls on all of them alike; at least ``repeats`` rounds, repeated until each
    has run ``min_total`` seconds (at most ``max_rounds``). On a shared machine the minimum is the least
    disturbed measurement."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    rounds = 0
    while rounds < repeats or (min(sum(t) for t in times) < min_total and rounds < max_rounds):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
        rounds += 1
    return [min(t) for t in times]


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1, min_total: float = 0.5,
              max_repeats: int = 100) -> float:
    """:func:`best_times_interleaved` of one function."""
    return best_times_interleaved([fn], repeats, min_total=min_total, max_rounds=max_repeats, warmup=warmup)[0]
