"""Lightning callbacks of the suite."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from experiments.data.audit import BadDataError
from experiments.errors import UserError, is_user_error

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


class DataCheckFailed(RuntimeError):
    """Rank 0's data check failed with an error that is not the user's (a bug, a disk error): see rank 0's log."""


class ShareDataVerdict(L.Callback):
    """Every DDP rank stops on rank 0's data check, at once and with rank 0's message.

    Only global rank 0 checks the data (:func:`experiments.data.audit.preflight`, before ``fit``): the other ranks
    need not decode the dataset again, and may not even see what rank 0 saw (a node-local ``paths.cache_dir``).
    ``setup`` is the first callback hook once the process group is up; there rank 0's verdict (None, or whether its
    error is the user's and its message) goes to every rank with Lightning's ``trainer.strategy.broadcast``
    (``torch.distributed.broadcast_object_list``). On an error every rank raises: rank 0 its own exception, the
    others :class:`~experiments.data.audit.BadDataError` with the same message (or :class:`DataCheckFailed`), so
    none is left waiting in a collective for a rank 0 that has stopped.

    Rank 0 exits first: the other ranks wait, on a gloo group of their own (``wait_for_rank_zero_s`` at most), until
    rank 0's process has gone. Lightning's launcher of local processes kills rank 0 as soon as one of its child
    processes exits with an error, which would cut rank 0 short before it records and prints the failure.

    Args:
        error: what rank 0's data check raised (None: the data passed); not read on the other ranks.
        wait_for_rank_zero_s: how long the other ranks wait for rank 0 to exit before they stop anyway.
    """

    def __init__(self, error: BaseException | None = None, wait_for_rank_zero_s: float = 60.0) -> None:
        self.error = error
        self.wait_for_rank_zero_s = float(wait_for_rank_zero_s)
        #: seconds this rank waited in the broadcast for rank 0's verdict (None before ``setup``)
        self.waited_s: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            if self.error is not None:
                raise self.error
            return
        mine = None if self.error is None else (is_user_error(self.error), str(self.error))
        start = time.perf_counter()
        verdict = trainer.strategy.broadcast(mine if trainer.is_global_zero else None, src=0)
        self.waited_s = time.perf_counter() - start
        if verdict is None:
            return
        exits = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=self.wait_for_rank_zero_s))
        if trainer.is_global_zero:
            raise self.error
        user_error, message = verdict
        log.error("rank %d: rank 0's data check failed (verdict received after %.3f s); stopping",
                  trainer.global_rank, self.waited_s)
        try:  # rank 0 never joins: the barrier ends when its process exits (or after the timeout)
            torch.distributed.barrier(group=exits)
        except Exception:  # noqa: BLE001 - a closed connection is the expected end
            pass
        raise (BadDataError if user_error else DataCheckFailed)(message)


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
