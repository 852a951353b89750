"""SLURM jobs that outlive their time limit: Lightning's cluster environment with auto-requeue.

Inside a SLURM job (Lightning's own test: ``SLURM_NTASKS`` set, the job not named ``bash`` or ``interactive``) the
trainer gets :class:`lightning.fabric.plugins.environments.SLURMEnvironment` with ``auto_requeue=True``. When SLURM
sends the requeue signal (``hydra/launcher=slurm`` asks for ``SIGUSR1`` 90 s before the time limit), Lightning saves
``hpc_ckpt_<n>.ckpt`` in the run folder (``trainer.default_root_dir``) and calls ``scontrol requeue <job id>``. The
requeued job starts the same command in the same run folder;
:meth:`experiments.training.resume.ResumePoint.after_requeue` finds that checkpoint and the run's MLflow run id
there, and the run goes on.
"""

from __future__ import annotations

import signal

from lightning.fabric.plugins.environments import SLURMEnvironment


def in_slurm_job() -> bool:
    """Whether this process is a task of a SLURM job, as Lightning decides it (``SLURMEnvironment.detect``)."""
    return SLURMEnvironment.detect()


def slurm_plugins(auto_requeue: bool = True, requeue_signal: str = "SIGUSR1") -> list[SLURMEnvironment]:
    """The ``plugins`` of the run's trainer (``trainer.plugins``): ``[SLURMEnvironment(auto_requeue, signal)]``
    inside a SLURM job, else none (the trainer then picks its environment itself)."""
    if not in_slurm_job():
        return []
    try:
        signum = signal.Signals[requeue_signal]
    except KeyError:
        raise ValueError(f"trainer.plugins.requeue_signal={requeue_signal} is not a signal name, e.g. SIGUSR1") from None
    return [SLURMEnvironment(auto_requeue=bool(auto_requeue), requeue_signal=signum)]
