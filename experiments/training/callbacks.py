"""Lightning callbacks of the suite."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from experiments.errors import UserError

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


class NonFiniteLossError(RuntimeError, UserError):
    """The training loss became NaN or infinite."""


#: What to try next, by the precision a run diverged under.
PRECISION_ADVICE = {
    "16-mixed": "float16 overflows past 65,504: use trainer.precision=bf16-mixed (Ampere or newer GPUs) or 32-true",
    "bf16-mixed": "try trainer.precision=32-true, or a lower model.optimizer.lr",
}


class StopOnNonFiniteLoss(L.Callback):
    """Stop training with :class:`NonFiniteLossError` once a training loss is NaN or infinite.

    A model that trains on NaN reports chance-level metrics without any error; this makes it an error that
    names the detector, the first bad step and the precision to try. To keep the accelerator's queue full,
    the check does not read the loss back every step: the first bad step is recorded on the device and read
    every ``check_every_n_steps`` steps and at the end of each epoch (under DDP, over all ranks).

    Args:
        model_name: the detector's name, for the message.
        check_every_n_steps: how often the recorded step is read back (1 = every step).
    """

    def __init__(self, model_name: str = "", check_every_n_steps: int = 25) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.model_name = model_name
        self.check_every_n_steps = int(check_every_n_steps)
        self._first_bad: torch.Tensor | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = trainer.global_step - 1 if trainer.global_step > 0 else 0  # the step this loss belongs to
        self._first_bad.masked_fill_(~torch.isfinite(loss.detach()) & (self._first_bad < 0), step)
        if (batch_idx + 1) % self.check_every_n_steps == 0:
            self._raise_if_bad(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: L.Trainer) -> None:
        if self._first_bad is None:
            return
        first_bad = int(trainer.strategy.reduce(self._first_bad.clone(), reduce_op="max"))
        if first_bad < 0:
            return
        precision = str(trainer.precision)
        advice = PRECISION_ADVICE.get(precision, "lower model.optimizer.lr, and check the data with task=check_data")
        raise NonFiniteLossError(
            f"the training loss of model={self.model_name or type(trainer.lightning_module).__name__} became "
            f"non-finite (NaN or inf) at step {first_bad} under trainer.precision={precision}; training stopped. "
            f"What to try: {advice}."
        )
