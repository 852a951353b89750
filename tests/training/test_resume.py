"""Interrupted runs: SIGKILL after the first checkpoint, then resume=<run id>; and seeded determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from experiments.tasks.train import train
from tests.conftest import compose_config, make_genimage_tree
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 5


def _train_cmd(tree: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *TINY, f"data.root={tree}", f"trainer.max_epochs={EPOCHS}",
            "trainer.accelerator=cpu", "trainer.precision=32-true", "~callbacks.early_stopping",
            "~callbacks.progress_bar", "diagnostics=false", *extra]


def test_sigkill_then_resume_keeps_one_metric_history(tmp_path):
    tree = make_genimage_tree(tmp_path / "genimage", n=24, size=32)
    env = {**os.environ, "SUITE_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_train_cmd(tree), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "logs").glob("train/runs/*/checkpoints/last.ckpt"))
        if found:
            ckpt = found[0]
            break
        time.sleep(0.2)
    assert ckpt is not None, "no checkpoint appeared before the run ended"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    run_id = (ckpt.parent.parent / "mlflow_run_id").read_text().strip()
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    steps_before = [m.step for m in client.get_metric_history(run_id, "val/auc")]
    assert len(steps_before) < EPOCHS, "the run finished before it was killed; the test proves nothing"

    done = subprocess.run(_train_cmd(tree, f"resume={run_id}"), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("val/auc", "val/loss", "train/loss"):
        history = client.get_metric_history(run_id, key)
        steps = [m.step for m in history]
        assert len(steps) == EPOCHS and len(set(steps)) == EPOCHS, (key, steps)  # no gap, no duplicate
        assert steps == sorted(steps)
    assert "test/auc" in run.data.metrics
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the same run went on


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, genimage_tree):
    cfg = compose_config(TINY + [f"data.root={genimage_tree}", f"resume={tmp_path / 'nothing.ckpt'}"], tmp_path)
    with pytest.raises(FileNotFoundError, match="resume="):
        train(cfg)


def test_same_seed_gives_same_metrics(tmp_path, genimage_tree):
    results = []
    for i in range(2):
        cfg = compose_config(TINY + [f"data.root={genimage_tree}", "debug=cpu", "trainer.max_epochs=1",
                                     "diagnostics=false"], tmp_path / f"run{i}")
        train(cfg)
        results.append(json.loads((tmp_path / f"run{i}" / "out" / "metrics.json").read_text()))
    a, b = results
    for key in a:
        if key.startswith(("time/",)):
            continue
        assert a[key] == pytest.approx(b[key], abs=1e-6, nan_ok=True), key


def _wait_for(predicate, proc: subprocess.Popen, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        assert proc.poll() is None, f"the run ended before {what}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {seconds:.0f} s")


@pytest.mark.slow
def test_slurm_requeue_resumes_the_same_mlflow_run(tmp_path):
    from tests.training.test_slurm import SLURM_TASK

    tree = make_genimage_tree(tmp_path / "genimage", n=24, size=32)
    bin_dir = tmp_path / "bin"  # a fake scontrol that records its arguments
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, **SLURM_TASK,
           "SUITE_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    job_dir = tmp_path / "job"  # a job's run folder outlives its requeue (hydra/launcher=slurm: the sweep dir)
    cmd = _train_cmd(tree, f"hydra.run.dir={job_dir}")
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: (job_dir / "checkpoints" / "last.ckpt").is_file(), proc, 240, "first epoch's checkpoint")
        os.kill(proc.pid, signal.SIGUSR1)  # SLURM's --signal=USR1@90
        hpc = _wait_for(lambda: list(job_dir.glob("hpc_ckpt_*.ckpt")), proc, 60, "requeue checkpoint")
        _wait_for(lambda: calls.is_file() and calls.read_text().strip(), proc, 30, "scontrol call")
        os.kill(proc.pid, signal.SIGTERM)  # what SLURM sends the requeued job's tasks
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert calls.read_text().split("\n")[0].split() == ["requeue", "4242"]
    assert hpc and hpc[0].stat().st_size > 0
    run_id = (job_dir / "mlflow_run_id").read_text().strip()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    before = [m.step for m in client.get_metric_history(run_id, "val/auc")]
    assert 1 <= len(before) < EPOCHS, f"{before}: the run finished before the signal; the test proves nothing"

    again = subprocess.run(cmd, cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "requeued SLURM job 4242" in again.stdout + again.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "resumed_from" in run.data.tags
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the same MLflow run went on
    for key in ("val/auc", "val/loss", "train/loss"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert len(steps) == EPOCHS and len(set(steps)) == EPOCHS, (key, steps)  # no duplicate, none missing
        assert len({b - a for a, b in zip(steps, steps[1:])}) == 1, (key, steps)  # one step count per epoch: no restart
    assert "test/auc" in run.data.metrics
