"""Keep names from the command line from writing outside the run's folders."""

from __future__ import annotations

import re
from pathlib import Path

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+=-]*$")


def plain_name(value: str, key: str) -> str:
    """``value`` if it is a single, plain path component; otherwise a ``ValueError`` naming the config key."""
    text = str(value)
    if not _PLAIN_NAME.match(text) or text in {".", ".."}:
        raise ValueError(
            f"{key}={text!r} is used as a file or folder name: use letters, digits and _ . - only (no '/', no '..')"
        )
    return text


def inside(base: str | Path, *parts: str) -> Path:
    """``base / parts``, refusing any result that resolves outside ``base``."""
    root = Path(base).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"{'/'.join(parts)} would be written outside {root}")
    return path
