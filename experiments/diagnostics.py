"""Diagnostic plots written after training and by ``task=evaluate``."""

from __future__ import annotations

from pathlib import Path


def write_diagnostics(cfg, model, datamodule, val, test, out_dir: Path, logger) -> list[Path]:
    return []
