"""The suite's one command: ``python run.py ...`` and ``spectral-suite ...`` (its installed console script).

:func:`main` is the one ``@hydra.main`` (configs: the project's ``conf/``, found as the package ``pkg://conf``); :func:`run_task` calls the
function that ``cfg.task.fn`` names. A :class:`experiments.errors.UserError` (a missing ``data.root``, a wrong
folder layout, an unknown run, ...) ends the command with its message alone and exit status 2;
``HYDRA_FULL_ERROR=1`` shows the traceback instead. A run folder that the failed launch left holding nothing
but Hydra's own files is removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_method
from omegaconf import DictConfig

from experiments.errors import USER_ERROR_EXIT, is_user_error
from experiments.process import use_huge_pages, use_plain_logs, use_project_root

log = logging.getLogger(__name__)

#: the project's config groups: the ``conf`` package, a checkout's ``conf/`` or the installed wheel's copy alike
#: (``SUITE_ROOT`` moves outputs and the store, not the configs)
CONF_DIR = "pkg://conf"
#: what Hydra writes into every run folder before the task starts
HYDRA_BOOKKEEPING = {".hydra"}


def user_error_in(err: BaseException) -> BaseException | None:
    """``err`` or the first error it was raised from (or while handling) that is meant for the user."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if is_user_error(current):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_task(cfg: DictConfig) -> Any:
    """Run ``cfg.task.fn``; a user error prints its message and exits with status 2 (a sweep job re-raises it)."""
    try:
        return get_method(cfg.task.fn)(cfg)
    except Exception as err:
        found = user_error_in(err)
        if found is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        remove_empty_run_folder()
        if _in_multirun():  # Hydra records the failed job and reports it when the sweep ends
            log.error("%s", found)
            raise
        print(f"error: {found}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # called outside Hydra (tests)
        return False


def remove_empty_run_folder() -> Path | None:
    """Delete this job's run folder when it holds only Hydra's files and logs; return it when removed."""
    try:
        folder = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return None
    if not folder.is_dir():
        return None
    if any(p.name not in HYDRA_BOOKKEEPING and p.suffix != ".log" for p in folder.iterdir()):
        return None
    shutil.rmtree(folder, ignore_errors=True)
    return folder


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> Any:
    return run_task(cfg)


def main() -> None:
    """``python run.py [task=...] [overrides]`` and ``spectral-suite [task=...] [overrides]``: one command line.

    Process settings come first: huge pages before torch is imported (``run.py`` sets them before importing
    this module), the project root (``SUITE_ROOT``) that ``paths.root_dir`` and the MLflow store read, and, off a
    terminal, no download bars (:func:`~experiments.process.use_plain_logs`).
    """
    use_huge_pages()
    use_project_root()
    use_plain_logs()
    _hydra_main()


if __name__ == "__main__":
    main()
