"""Training against a real ``mlflow server`` (SQLite backend, proxied artifacts) on loopback.

The server is started once for the module on a free port and always stopped
(its whole process group) by the fixture's finaliser; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from experiments import tracking
from experiments.tasks.train import train
from tests.conftest import compose_config, make_genimage_tree
from tests.conftest import TINY

START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` with a SQLite store and ``--serve-artifacts`` under ``folder``, in its own process group."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # the job runner (huey consumers) is not needed to track runs; it only slows start-up and shutdown
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (folder / "server.log").open("w")
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).read().strip() == b"OK":
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"mlflow server did not answer {url}/health within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it is still there after 15 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
    try:  # workers left behind by the parent
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    proc = start_mlflow_server(folder, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, folder / "server.log")
        yield url
    finally:
        stop_server(proc)


def _artifacts(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_training_and_sweep_tracked_by_a_real_server(mlflow_server, tmp_path):
    tree = make_genimage_tree(tmp_path / "genimage", n=6, size=32)
    common = [f"data.root={tree}", f"logger.tracking_uri={mlflow_server}", "logger.artifact_location=null",
              "diagnostics=false", "trainer.accelerator=cpu", "trainer.precision=32-true"]
    one_epoch = ["trainer.max_epochs=1", "~callbacks.progress_bar", "trainer.enable_model_summary=false"]
    jobs = {
        "single": TINY + common + one_epoch,
        # the sweep: two detectors of one experiment, as `python run.py -m model=a,b` would run them
        "sweep0": TINY + common + one_epoch + ["seed=1"],
        "sweep1": ["data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.num_workers=0",
                   "model=radial_angular_logreg", *common],
    }
    for name, overrides in jobs.items():
        train(compose_config(overrides, tmp_path / name))

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("detectors-genimage_tiny")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3
    assert sorted(r.data.params["model/name"] for r in runs) == ["radial_angular_logreg", "resnet34_localfft",
                                                                  "resnet34_localfft"]
    for run in runs:
        assert run.info.status == "FINISHED"
        model = run.data.params["model/name"]
        assert run.data.params["data/root"] == str(tree)
        for key in ("test/auc", "best_val/auc", "data/train_images", "val/auc"):
            assert key in run.data.metrics, (model, key)
        if model == "resnet34_localfft":  # the per-epoch history went through the server too
            assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 1
        files = _artifacts(client, run.info.run_id)
        weights = f"{model}.pth" if model == "resnet34_localfft" else f"{model}.skops"
        assert {"config.yaml", "metrics.json", weights, "checkpoints/config.yaml"} <= files, files
    # artifacts come back through the server's proxy
    local = client.download_artifacts(runs[0].info.run_id, "metrics.json", str(tmp_path / "dl"))
    assert '"test/auc"' in Path(local).read_text()


def test_unreachable_server_fails_fast_with_a_clear_message(tmp_path, genimage_tree):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable, match="not reachable.*make mlflow-server|not reachable"):
        tracking.check_tracking_server(url, timeout=2)
    cfg = compose_config(TINY + [f"data.root={genimage_tree}", f"logger.tracking_uri={url}", "debug=fdr"], tmp_path)
    with pytest.raises(tracking.TrackingUnavailable, match=url.replace(".", r"\.")):
        train(cfg)
    assert time.monotonic() - start < 30
