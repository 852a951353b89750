"""What every figure of the suite shares: a pyplot-free figure saved as PNG, and input conversion.

Every plotting function draws on a fresh :class:`matplotlib.figure.Figure` that is never
registered with ``pyplot``, so nothing leaks into global figure state; the figure is
saved to ``path`` (parent folders are created), cleared, and ``path`` is returned.
Inputs may be numpy arrays or torch tensors. Labels: real = 0, synthetic = 1
(:data:`experiments.data.layouts.CLASS_NAMES`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 100


def to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


#: what the figures being drawn show (model, dataset, split); :func:`with_subject` sets it
_SUBJECT: contextvars.ContextVar[str | None] = contextvars.ContextVar("plot_subject", default=None)


def with_subject(subject: str | None, draw: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``draw(*args, **kwargs)``; every figure it saves names ``subject`` above its own title."""
    token = _SUBJECT.set(subject)
    try:
        return draw(*args, **kwargs)
    finally:
        _SUBJECT.reset(token)


def _name_subject(fig: Figure) -> None:
    subject = _SUBJECT.get()
    if not subject:
        return
    existing = fig._suptitle.get_text() if fig._suptitle is not None else ""
    fig.suptitle(f"{subject}: {existing}" if existing else subject, fontsize=10)


@contextlib.contextmanager
def saved_figure(path: str | Path, figsize: tuple[float, float], **kwargs: Any) -> Iterator[Figure]:
    """Yield a pyplot-free figure; on exit save it to ``path`` and release it."""
    fig = Figure(figsize=figsize, dpi=DPI, **kwargs)
    try:
        yield fig
        _name_subject(fig)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()


def is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
