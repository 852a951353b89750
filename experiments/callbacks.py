"""Lightning callbacks of the suite."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(L.Callback):
    """Save ``last.ckpt`` when training is interrupted (Ctrl-C or SIGTERM), so ``resume=`` can continue it.

    Lightning turns both signals into exceptions that reach ``on_exception``; the
    checkpoint is written mid-epoch and Lightning restores its loop progress on resume.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        if trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path)
        log.warning("training interrupted (%s): checkpoint saved to %s; continue with resume=%s",
                    type(exception).__name__, self.path, self.path)
