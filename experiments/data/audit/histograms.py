"""Histograms of file records (format, short side, size, JPEG quality) and the distance between two of them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

import numpy as np

from experiments.data.audit.inspection import FileRecord

#: lower edges of the short-side bins, in pixels (half-octave steps); the last bin is open-ended.
SHORT_SIDE_EDGES = (0, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
#: width of the JPEG-quality bins used for the leakage test (1-5, 6-10, ..., 96-100).
QUALITY_BIN_WIDTH = 5


@lru_cache(maxsize=4096)
def short_side_bin(side: int) -> str:
    """Label of the half-octave bin of ``SHORT_SIDE_EDGES`` holding ``side``, e.g. ``"256-383"``."""
    idx = int(np.searchsorted(SHORT_SIDE_EDGES, side, side="right")) - 1
    if idx == len(SHORT_SIDE_EDGES) - 1:
        return f">={SHORT_SIDE_EDGES[-1]}"
    return f"{SHORT_SIDE_EDGES[idx]}-{SHORT_SIDE_EDGES[idx + 1] - 1}"


def quality_bin(quality: int) -> str:
    lo = (quality - 1) // QUALITY_BIN_WIDTH * QUALITY_BIN_WIDTH + 1
    return f"{lo}-{lo + QUALITY_BIN_WIDTH - 1}"


def _sort_key(key: Any) -> tuple:
    return (0, key) if isinstance(key, (int, float)) else (1, str(key))


@dataclass
class Histograms:
    """Histograms over a set of readable images."""

    formats: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    short_side: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    jpeg_quality: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, records: Iterable[FileRecord]) -> "Histograms":
        hist = cls()
        for r in records:
            if not r.readable:
                continue
            hist.formats[r.format or "unknown"] += 1
            hist.modes[r.mode or "unknown"] += 1
            hist.short_side[short_side_bin(r.short_side)] += 1
            hist.sizes[f"{r.width}x{r.height}"] += 1
            if r.jpeg_quality is not None:
                hist.jpeg_quality[r.jpeg_quality] += 1
        return hist

    @classmethod
    def merged(cls, parts: Iterable["Histograms"]) -> "Histograms":
        """One histogram of the images of ``parts`` (their counts added)."""
        out = cls()
        for h in parts:
            for name in ("formats", "modes", "short_side", "sizes", "jpeg_quality"):
                getattr(out, name).update(getattr(h, name))
        return out

    def to_dict(self, top_sizes: int = 10) -> dict[str, dict[str, int]]:
        def plain(counter: Counter) -> dict[str, int]:
            return {str(k): int(v) for k, v in sorted(counter.items(), key=lambda kv: _sort_key(kv[0]))}

        return {
            "formats": plain(self.formats),
            "modes": plain(self.modes),
            "short_side": {k: int(v) for k, v in sorted(self.short_side.items(), key=lambda kv: _bin_start(kv[0]))},
            "top_sizes": {k: int(v) for k, v in self.sizes.most_common(top_sizes)},
            "jpeg_quality": plain(self.jpeg_quality),
        }


def _bin_start(label: str) -> int:
    return int(label.lstrip(">=").split("-")[0])


def shares(counter: Counter, top: int = 3) -> str:
    """``"JPEG 60%, PNG 40%"``: the ``top`` most common entries as percentages."""
    total = sum(counter.values())
    if not total:
        return "-"
    items = counter.most_common(top)
    text = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in items)
    return text + (", ..." if len(counter) > top else "")


def total_variation(a: Counter, b: Counter) -> float:
    """Total-variation distance between two histograms: half the L1 distance of their normalised counts, in [0, 1]."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 0.0
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))
