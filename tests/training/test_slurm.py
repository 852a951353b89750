"""SLURM: the trainer's SLURMEnvironment with auto-requeue inside a job (none outside), the sbatch signal that
``hydra/launcher=slurm`` asks for, and the checkpoint a requeued job finds in its run folder.

The requeue itself (SIGUSR1 mid-run, ``scontrol requeue``, the restart in the same MLflow run) is
``tests/training/test_resume.py::test_slurm_requeue_resumes_the_same_mlflow_run``."""

from __future__ import annotations

import os
import time

import pytest
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

from experiments.training.resume import RUN_ID_FILE, ResumePoint
from experiments.training.slurm import in_slurm_job, slurm_plugins
from tests.conftest import compose_config

#: what srun exports to each task of a one-task job (enough for Lightning's SLURMEnvironment)
SLURM_TASK = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
              "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
              "SLURM_NODELIST": "localhost"}


@pytest.fixture
def no_slurm(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)


def test_no_plugin_outside_slurm(no_slurm):
    assert not in_slurm_job() and slurm_plugins() == []


def test_auto_requeue_environment_inside_a_slurm_task(no_slurm, monkeypatch):
    for key, value in SLURM_TASK.items():
        monkeypatch.setenv(key, value)
    (env,) = slurm_plugins()
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal.name == "SIGUSR1"
    with pytest.raises(ValueError, match="requeue_signal=USR9"):
        slurm_plugins(requeue_signal="USR9")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # an salloc shell: Lightning's own test says no
    assert slurm_plugins() == []


def test_the_trainer_config_builds_the_plugin(no_slurm, tmp_path, monkeypatch):
    cfg = compose_config(["trainer=ddp"], tmp_path)
    assert instantiate(cfg.trainer.plugins) == []
    for key, value in SLURM_TASK.items():
        monkeypatch.setenv(key, value)
    assert [type(p) for p in instantiate(cfg.trainer.plugins)] == [SLURMEnvironment]


def test_the_slurm_launcher_asks_for_sigusr1_before_the_time_limit(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit", reason="the cluster extra (pip install -e '.[cluster]') is not installed")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    bin_dir = tmp_path / "bin"  # submitit's SLURM executor wants an srun on PATH; nothing is submitted
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=8"],
                         tmp_path)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    params.pop("_target_")
    params.pop("submitit_folder")
    # what the plugin's SlurmLauncher.launch hands to submitit
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params["name"] = "run"
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    signals = [line for line in script.splitlines() if line.startswith("#SBATCH --signal")]
    assert signals == ["#SBATCH --signal=USR1@90"], script
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=8" in script


def _touch(path, mtime: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"ckpt")
    os.utime(path, (mtime, mtime))


def test_after_requeue_takes_the_newest_checkpoint_and_the_run_id(tmp_path):
    assert ResumePoint.after_requeue(tmp_path) is None  # a first start
    now = time.time()
    _touch(tmp_path / "hpc_ckpt_1.ckpt", now - 20)
    assert ResumePoint.after_requeue(tmp_path) is None, "without the run id there is no run to continue"
    (tmp_path / RUN_ID_FILE).write_text("0123456789abcdef0123456789abcdef\n")
    assert ResumePoint.after_requeue(tmp_path).ckpt.name == "hpc_ckpt_1.ckpt"
    _touch(tmp_path / "checkpoints" / "last.ckpt", now - 10)  # the SIGTERM checkpoint, after the signal's
    point = ResumePoint.after_requeue(tmp_path)
    assert point.ckpt == (tmp_path / "checkpoints" / "last.ckpt").resolve()
    assert point.run_id == "0123456789abcdef0123456789abcdef" and point.folder == tmp_path.resolve()
    _touch(tmp_path / "hpc_ckpt_2.ckpt", now)
    assert ResumePoint.after_requeue(tmp_path).ckpt.name == "hpc_ckpt_2.ckpt"
