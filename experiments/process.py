"""Process-wide settings that every entry point makes first, before torch is imported.

:func:`use_huge_pages` turns on PyTorch's transparent-huge-page backing of large CPU tensors
(``THP_MEM_ALLOC_ENABLE``, read when torch is imported). A 64 x 3 x 224 x 224 float batch is 38 MB; without
it, glibc serves every such tensor with a fresh ``mmap`` that is page-faulted in 4 KB at a time on each call
(about ten thousand faults), which costs the CPU features up to half their time (``make bench``,
docs/scaling.md). Set ``THP_MEM_ALLOC_ENABLE=0`` in the environment to turn it off; it has no effect when
the kernel's ``transparent_hugepage`` mode is ``never``.

:func:`use_project_root` sets ``SUITE_ROOT`` to the project root (unless already set), so the config's paths and the
MLflow store (``paths.root_dir``) are the project's own whatever the working directory.

:func:`default_cache_dir` is the user's cache folder, where caches go when the config names none.

Library modules never call these on import: ``run.py`` and the ``python -m`` mains do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterable


def use_huge_pages() -> None:
    """Back large CPU tensors with transparent huge pages, unless the environment says otherwise."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def project_root() -> Path:
    """The suite's root folder: ``$SUITE_ROOT`` when set, else the checkout that holds ``experiments/``."""
    env = os.environ.get("SUITE_ROOT")
    return Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[1]


def use_project_root() -> Path:
    """Set ``SUITE_ROOT`` (read by ``conf/paths/default.yaml``) to :func:`project_root`; return it."""
    root = project_root()
    os.environ["SUITE_ROOT"] = str(root)
    return root


def progress(iterable: Iterable[Any], desc: str, total: int | None = None, unit: str = "batch") -> Iterable[Any]:
    """``iterable`` with a tqdm bar on an interactive terminal only, so tests and log files stay quiet;
    ``SUITE_PROGRESS=1`` (or ``0``) forces it on (off)."""
    from tqdm import tqdm

    forced = os.environ.get("SUITE_PROGRESS")
    show = sys.stderr.isatty() if forced is None else forced == "1"
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not show, leave=False)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spectral-detector-suite`` (``~/.cache/...`` when unset): where caches go when no
    ``paths.cache_dir`` is given. Never inside a dataset, which may be read-only or shared."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spectral-detector-suite"
