"""Process-wide settings that every entry point makes first, before torch is imported.

:func:`use_huge_pages` turns on PyTorch's transparent-huge-page backing of large CPU tensors
(``THP_MEM_ALLOC_ENABLE``, read when torch is imported). A 64 x 3 x 224 x 224 float batch is 38 MB; without
it, glibc serves every such tensor with a fresh ``mmap`` that is page-faulted in 4 KB at a time on each call
(about ten thousand faults), which costs the CPU features up to half their time (``make bench``,
docs/scaling.md). Set ``THP_MEM_ALLOC_ENABLE=0`` in the environment to turn it off; it has no effect when
the kernel's ``transparent_hugepage`` mode is ``never``.

:func:`use_project_root` sets ``SUITE_ROOT`` to the project root (unless already set), so the config's paths and the
MLflow store (``paths.root_dir``) are the project's own whatever the working directory: a checkout's folder, or,
for an installed package, the working directory (never site-packages).

:func:`default_cache_dir` is the user's cache folder, where caches go when the config names none.

:func:`progress_bar` and :func:`progress` are the suite's one progress display: a tqdm bar on a terminal, a
plain log line every 10 % or 30 s in log files and CI (:class:`ProgressLines`); :func:`use_plain_logs` switches
the download bars of the Hugging Face hub and MLflow off there too.

Library modules never call these on import: ``run.py`` and the ``python -m`` mains do.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)


def use_huge_pages() -> None:
    """Back large CPU tensors with transparent huge pages, unless the environment says otherwise."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def project_root() -> Path:
    """The suite's root folder, where data, run outputs and the MLflow store go: ``$SUITE_ROOT`` when set; else
    the checkout that holds ``experiments/`` (a clone, or an editable install of one); else, for an installed
    package (nothing beside it but site-packages), the working directory."""
    env = os.environ.get("SUITE_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "run.py").is_file() else Path.cwd().resolve()


def conf_dir() -> Path:
    """The folder of the suite's Hydra configs: the ``conf`` package (a checkout's ``conf/``, or the installed
    package's copy); configs never move with ``SUITE_ROOT``."""
    import importlib.resources

    return Path(str(importlib.resources.files("conf")))


def use_project_root() -> Path:
    """Set ``SUITE_ROOT`` (read by ``conf/paths/default.yaml``) to :func:`project_root`; return it."""
    root = project_root()
    os.environ["SUITE_ROOT"] = str(root)
    return root


def on_terminal() -> bool:
    """Whether progress is drawn as bars: stderr is an interactive terminal. ``SUITE_PROGRESS=1`` forces bars,
    ``SUITE_PROGRESS=0`` forces plain lines (:class:`ProgressLines`)."""
    forced = os.environ.get("SUITE_PROGRESS")
    if forced is not None:
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def use_plain_logs() -> None:
    """Off a terminal, switch off the download bars of the Hugging Face hub (weights) and of MLflow (artifacts)
    by their own environment switches, so that log files and CI logs get no carriage-return runs. Set either
    variable yourself to choose otherwise."""
    if not on_terminal():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class ProgressLines:
    """Progress for log files and CI logs: a plain log line (no carriage return) every 10 % of ``total`` or
    every 30 s, whichever comes first, and a last one at :meth:`close`; without a total, every 30 s.

    It has the part of tqdm's interface that the suite uses (``update``, ``set_postfix_str``, ``close``, a
    context manager), so a caller of :func:`progress_bar` does not know which one it holds. Lines go to the
    ``experiments.process`` logger (the task's log file under ``run.py``), or to stderr where logging is not
    set up (a ``python -m`` tool).
    """

    #: a line at least every this fraction of the total ...
    every_fraction = 0.1
    #: ... and at least every this many seconds
    every_s = 30.0

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", clock=time.monotonic) -> None:
        self.desc, self.total, self.unit, self.clock = desc, total, unit, clock
        self.n = 0
        self.postfix = ""
        self.start = self.last = clock()
        self.step = max(1, math.ceil(total * self.every_fraction)) if total else None
        self.next_n = self.step
        self.shown_n = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if (self.next_n is not None and self.n >= self.next_n) or now - self.last >= self.every_s:
            self._line(now)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = str(text)

    def close(self) -> None:
        if self.n != self.shown_n:
            self._line(self.clock())

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, now: float) -> None:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        _emit(f"{self.desc}: {done} {self.unit}{share}, {now - self.start:.0f} s{postfix}")
        self.last, self.shown_n = now, self.n
        if self.step is not None:
            self.next_n = (self.n // self.step + 1) * self.step


def _emit(line: str) -> None:
    if log.hasHandlers():
        log.info("%s", line)
    else:
        print(line, file=sys.stderr, flush=True)


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, leave: bool = False):
    """The suite's one progress display: a tqdm bar on a terminal (:func:`on_terminal`), :class:`ProgressLines`
    elsewhere, nothing when not ``enabled``. Use it as tqdm's: ``with progress_bar(n, "scoring") as bar: ...``."""
    from tqdm import tqdm

    if enabled and not on_terminal():
        return ProgressLines(desc, total, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=leave)


def progress(iterable: Iterable[Any], desc: str, total: int | None = None, unit: str = "batch") -> Iterable[Any]:
    """``iterable`` with :func:`progress_bar`: a bar on a terminal, a log line every 10 % or 30 s elsewhere."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:  # no length (a generator, a loader over an iterable dataset)
            total = None
    if on_terminal():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False)
    return _with_lines(iterable, ProgressLines(desc, total, unit))


def _with_lines(iterable: Iterable[Any], lines: ProgressLines) -> Iterator[Any]:
    with lines:
        for item in iterable:
            yield item
            lines.update(1)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spectral-detector-suite`` (``~/.cache/...`` when unset): where caches go when no
    ``paths.cache_dir`` is given. Never inside a dataset, which may be read-only or shared."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spectral-detector-suite"
