"""Finding where an interrupted training run stopped: for ``resume=<run id | run folder | checkpoint>``, and for a
SLURM job that was requeued (:meth:`ResumePoint.after_requeue`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.tracking import RUN_ID

RUN_ID_FILE = "mlflow_run_id"
#: what Lightning names the checkpoint it saves on SLURM's requeue signal, in ``trainer.default_root_dir``
HPC_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"


@dataclass(frozen=True)
class ResumePoint:
    """The Lightning checkpoint to continue from, its run folder and its MLflow run (if known)."""

    ckpt: Path
    folder: Path
    run_id: str | None

    @classmethod
    def find(cls, ref: str, tracking_uri: str) -> "ResumePoint":
        path = Path(str(ref)).expanduser()
        if path.is_file():
            ckpt, folder = path, path.parent.parent
        elif path.is_dir():
            folder = path
            ckpt = folder / "checkpoints" / "last.ckpt"
        elif RUN_ID.match(str(ref)):
            folder = cls._folder_of_run(str(ref), tracking_uri)
            ckpt = folder / "checkpoints" / "last.ckpt"
        else:
            raise FileNotFoundError(f"resume={ref} is neither a checkpoint file, a run folder nor an MLflow run id")
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"resume={ref}: no checkpoint at {ckpt}; the run was stopped before its first checkpoint, start it again"
            )
        id_file = folder / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        return cls(ckpt.resolve(), folder.resolve(), run_id)

    @classmethod
    def after_requeue(cls, folder: Path) -> "ResumePoint | None":
        """Where a requeued job of run folder ``folder`` goes on: the newest of Lightning's requeue checkpoints
        (``hpc_ckpt_<n>.ckpt``) and ``checkpoints/last.ckpt`` (the SIGTERM one of :class:`CheckpointOnInterrupt`,
        or the last epoch's), with the MLflow run id the first start wrote there. None when the folder holds no
        checkpoint or no run id: the job starts afresh."""
        folder = Path(folder)
        id_file = folder / RUN_ID_FILE
        found = [p for p in [*folder.glob(HPC_CHECKPOINT_GLOB), folder / "checkpoints" / "last.ckpt"] if p.is_file()]
        if not found or not id_file.is_file():
            return None
        newest = max(found, key=lambda p: p.stat().st_mtime_ns)
        return cls(newest.resolve(), folder.resolve(), id_file.read_text().strip())

    @staticmethod
    def _folder_of_run(run_id: str, tracking_uri: str) -> Path:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        try:
            run = client.get_run(run_id)
        except Exception as err:  # noqa: BLE001 - unknown run or unreachable store
            raise FileNotFoundError(f"resume={run_id}: MLflow run not found in {tracking_uri} ({err})") from None
        folder = run.data.tags.get("output_dir")
        if not folder:
            raise FileNotFoundError(f"resume={run_id}: the MLflow run has no output_dir tag; pass the checkpoint path")
        return Path(folder)
