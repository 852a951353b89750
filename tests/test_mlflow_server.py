"""Training against a real ``mlflow server`` on loopback: SQLite backend with proxied artifacts, and the cluster
set-up of ``make mlflow-server BACKEND=postgresql://... ARTIFACTS=<shared folder>`` on a temporary PostgreSQL.

Every server is started on a free port and always stopped (its whole process group) by its fixture's finaliser;
every wait is bounded.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import lightning as L
import mlflow
import pytest

from experiments import tracking
from experiments.tracking import HTTP_ENV
from experiments.tasks.train import train
from tests.conftest import compose_config, make_genimage_tree
from tests.conftest import TINY

START_TIMEOUT = 90.0
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int, cmd: list[str] | None = None) -> subprocess.Popen:
    """``mlflow server`` (by default with a SQLite store and ``--serve-artifacts`` under ``folder``; or ``cmd``), in
    its own process group, its output in ``folder/server.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = cmd or [sys.executable, "-m", "mlflow", "server",
                  "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                  "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # the job runner (huey consumers) is not needed to track runs; it only slows start-up and shutdown
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (folder / "server.log").open("w")
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    """Until ``url/health`` answers OK; fails with the server's log when it exits or the time is up."""
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


# ------------------------------------------------------------------ the cluster set-up: PostgreSQL + shared artifacts
def postgres_binaries() -> dict[str, str] | None:
    """``initdb`` and ``postgres``: on PATH, else in the Debian/Ubuntu package's folder; None when missing."""
    found = {}
    for name in ("initdb", "postgres"):
        path = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
        if path is None:
            return None
        found[name] = path
    return found


def as_unprivileged(cmd: list[str]) -> list[str] | None:
    """``cmd`` run as ``nobody`` when this is root (PostgreSQL refuses to run as root); None when that is impossible."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return None
    return [runuser, "-u", "nobody", "--", *cmd] if runuser else None


@pytest.fixture
def postgres_uri():
    """A throw-away PostgreSQL cluster (initdb in a temporary folder, trust auth, loopback, its socket in that
    folder) with an empty ``mlflow`` database; its SQLAlchemy URI. Skipped when PostgreSQL or psycopg2 is not installed."""
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[cluster]')")
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's initdb/postgres binaries are not installed (e.g. apt-get install postgresql)")
    if as_unprivileged(["true"]) is None:
        pytest.skip("running as root without runuser or a 'nobody' user: PostgreSQL refuses to run as root")
    folder = Path(tempfile.mkdtemp(prefix="mlflow-pg-"))  # not pytest's tmp_path: 'nobody' cannot enter that
    if os.geteuid() == 0:
        entry = pwd.getpwnam("nobody")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    port = free_port()
    proc = None
    try:
        init = subprocess.run(as_unprivileged([binaries["initdb"], "-D", str(folder / "data"), "-U", "postgres",
                                               "--auth=trust", "-E", "UTF8", "--no-sync"]),
                              cwd=folder, capture_output=True, text=True, timeout=180)
        assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]
        log = (folder / "postgres.log").open("w")
        proc = subprocess.Popen(as_unprivileged([binaries["postgres"], "-D", str(folder / "data"), "-p", str(port),
                                                 "-k", str(folder), "-c", "listen_addresses=127.0.0.1",
                                                 "-c", "fsync=off"]),
                                cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                        connect_timeout=2)
                break
            except psycopg2.OperationalError:
                assert proc.poll() is None, (folder / "postgres.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "PostgreSQL did not accept connections within 60 s"
                time.sleep(0.3)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        # the driver named: SQLAlchemy 2.1 takes a bare postgresql:// for psycopg 3, the cluster extra installs psycopg2
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(folder, ignore_errors=True)


def make_mlflow_server_command(**variables: str) -> list[str]:
    """The command ``make mlflow-server VAR=value ...`` runs (``make -n``: nothing is built or started)."""
    venv = Path(sys.executable).parent.parent
    args = [f"{k}={v}" for k, v in variables.items()]
    dry = subprocess.run(["make", "-n", "mlflow-server", f"VENV={venv}", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    line = next(x for x in reversed(dry.stdout.splitlines()) if " server " in x)
    return shlex.split(line)


def test_make_mlflow_server_defaults_to_the_project_store_on_loopback():
    cmd = make_mlflow_server_command()
    flag = lambda name: cmd[cmd.index(name) + 1]  # noqa: E731
    assert cmd[1] == "server" and "--serve-artifacts" in cmd
    assert flag("--host") == "127.0.0.1" and flag("--port") == "5000" and flag("--workers") == "1"
    assert flag("--backend-store-uri") == "sqlite:///mlruns.db" and flag("--artifacts-destination") == "mlartifacts"
    cluster = make_mlflow_server_command(HOST="0.0.0.0", BACKEND="postgresql://mlflow@db/mlflow", ARTIFACTS="s3://b/a")
    assert cluster[cluster.index("--host") + 1] == "0.0.0.0"
    assert cluster[cluster.index("--backend-store-uri") + 1] == "postgresql://mlflow@db/mlflow"
    assert cluster[cluster.index("--artifacts-destination") + 1] == "s3://b/a"


@pytest.mark.slow
def test_training_tracked_by_a_server_on_postgresql_with_shared_artifacts(postgres_uri, tmp_path):
    artifacts = tmp_path / "shared-artifacts"  # a folder every node mounts, or an s3:// bucket
    port = free_port()
    cmd = make_mlflow_server_command(HOST="127.0.0.1", PORT=str(port), BACKEND=postgres_uri, ARTIFACTS=str(artifacts))
    assert cmd[cmd.index("--backend-store-uri") + 1] == postgres_uri
    url = f"http://127.0.0.1:{port}"
    proc = start_mlflow_server(tmp_path / "server", port, cmd)
    try:
        wait_for_health(url, proc, tmp_path / "server" / "server.log", timeout=300)  # first start: migrations
        tree = make_genimage_tree(tmp_path / "genimage", n=4, size=32)
        train(compose_config(TINY + [f"data.root={tree}", f"logger.tracking_uri={url}", "logger.artifact_location=null",
                                     "diagnostics=false", "trainer.accelerator=cpu", "trainer.precision=32-true",
                                     "trainer.max_epochs=1", "~callbacks.progress_bar"], tmp_path / "run"))
        client = mlflow.MlflowClient(tracking_uri=url)
        (run,) = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])
        assert run.info.status == "FINISHED" and "test/auc" in run.data.metrics
        assert "metrics.json" in _artifacts(client, run.info.run_id)
        # the server stored it in the shared artifact folder, under the run
        assert [p.parent.name for p in artifacts.rglob("metrics.json")] == ["artifacts"]
        assert run.info.run_id in str(next(artifacts.rglob("metrics.json")))
    finally:
        stop_server(proc)
    import psycopg2  # the run is in PostgreSQL, not in a file next to the server

    conn = psycopg2.connect(postgres_uri.replace("+psycopg2", ""))
    with conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone() == ("FINISHED",)
    conn.close()
# -- a server outage mid-run ---------------------------------------------------------------------------------
#: shared between the test and the Lightning callback it adds by _target_ (the callback runs in this process)
OUTAGE: dict = {}


class Outage(L.Callback):
    """At the end of epoch ``at_epoch``, SIGKILL the tracking server; a thread restarts it on the same port and
    store ``down_s`` seconds later. Every training step logs one metric through the run's logger (as a per-step
    metric would) and records when it ended; every ``log_metrics`` call of the logger is recorded."""

    def __init__(self, at_epoch: int = 1, down_s: float = 3.0, step_sleep: float = 0.25) -> None:
        self.at_epoch, self.down_s, self.step_sleep = at_epoch, down_s, step_sleep

    def on_fit_start(self, trainer, pl_module) -> None:
        logger = trainer.logger
        send = logger.log_metrics

        def recording(metrics, step=None):
            OUTAGE["logged"].extend((key, step or 0) for key in metrics)
            start = time.monotonic()
            send(metrics, step)
            OUTAGE["call_seconds"].append(time.monotonic() - start)

        logger.log_metrics = recording

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.step_sleep)  # a step long enough for the run to outlast the outage
        trainer.logger.log_metrics({"outage/step_seconds": self.step_sleep}, step=trainer.global_step)
        OUTAGE["step_ends"].append(time.monotonic())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.at_epoch or "killed_at" in OUTAGE:
            return
        os.killpg(OUTAGE["proc"].pid, signal.SIGKILL)
        OUTAGE["proc"].wait(timeout=15)
        OUTAGE["killed_at"] = time.monotonic()

        def restart() -> None:
            time.sleep(self.down_s)
            OUTAGE["proc"] = start_mlflow_server(OUTAGE["folder"], OUTAGE["port"])
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    if urllib.request.urlopen(OUTAGE["url"] + "/health", timeout=2).read().strip() == b"OK":
                        OUTAGE["back_at"] = time.monotonic()
                        return
                except OSError:
                    time.sleep(0.2)

        OUTAGE["restarter"] = threading.Thread(target=restart, daemon=True)
        OUTAGE["restarter"].start()


@pytest.fixture
def restartable_server(tmp_path):
    folder, port = tmp_path / "server", free_port()
    OUTAGE.clear()
    OUTAGE.update(folder=folder, port=port, url=f"http://127.0.0.1:{port}", logged=[], step_ends=[], call_seconds=[],
                  proc=start_mlflow_server(folder, port))
    try:
        wait_for_health(OUTAGE["url"], OUTAGE["proc"], folder / "server.log")
        yield OUTAGE["url"]
    finally:
        if "restarter" in OUTAGE:
            OUTAGE["restarter"].join(timeout=START_TIMEOUT)
        stop_server(OUTAGE["proc"])


@pytest.mark.slow
def test_a_server_killed_mid_run_loses_nothing_and_never_stalls_training(restartable_server, tmp_path, monkeypatch):
    """SIGKILL the server after epoch 1 of 5, restart it a few seconds later on the same port and store: every
    metric step, tag and artifact the run logged is on the server at the end, and no training step waited on
    the network (MLflow's asynchronous queue, retried within logger.http)."""
    for variable in HTTP_ENV.values():  # the run's logger.http policy leaves the environment with the test
        monkeypatch.setenv(variable, "1")
        monkeypatch.delenv(variable)
    asked: dict[str, list] = {"artifacts": [], "tags": []}
    log_artifact, set_tag = mlflow.MlflowClient.log_artifact, mlflow.MlflowClient.set_tag

    def recording_artifact(self, run_id, local_path, artifact_path=None):
        asked["artifacts"].append("/".join(p for p in (artifact_path, Path(local_path).name) if p))
        return log_artifact(self, run_id, local_path, artifact_path)

    def recording_tag(self, run_id, key, value, synchronous=None):
        asked["tags"].append(key)
        return set_tag(self, run_id, key, value, synchronous=synchronous)

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", recording_artifact)
    monkeypatch.setattr(mlflow.MlflowClient, "set_tag", recording_tag)
    tree = make_genimage_tree(tmp_path / "genimage", n=10, size=32)
    epochs = 5
    cfg = compose_config(TINY + [
        f"data.root={tree}", f"logger.tracking_uri={restartable_server}", "logger.artifact_location=null",
        "logger.http.max_retries=6", "logger.http.backoff_factor=1", "logger.http.timeout=5", "+logger.tags.note=outage",
        "diagnostics=false", "trainer.accelerator=cpu", "trainer.precision=32-true", f"trainer.max_epochs={epochs}",
        "trainer.enable_model_summary=false", "~callbacks.progress_bar", "~callbacks.early_stopping",
        "stats.bootstrap_resamples=0", "+callbacks.outage._target_=tests.test_mlflow_server.Outage"], tmp_path)
    start = time.monotonic()
    train(cfg)
    seconds = time.monotonic() - start
    assert "killed_at" in OUTAGE and "back_at" in OUTAGE, "the outage did not happen during the run"
    steps_after_kill = sum(t > OUTAGE["killed_at"] for t in OUTAGE["step_ends"])
    assert steps_after_kill > 0, "training ended before the server was killed"

    client = mlflow.MlflowClient(tracking_uri=restartable_server)
    runs = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    logged = Counter(OUTAGE["logged"])
    on_server = Counter((key, m.step) for key in {k for k, _ in logged} for m in client.get_metric_history(run_id, key))
    missing = logged - on_server
    assert not missing, f"{sum(missing.values())} of {sum(logged.values())} metric values lost: {sorted(missing)[:10]}"
    n_steps = len(OUTAGE["step_ends"])
    assert logged[("outage/step_seconds", n_steps)] == 1 and len({s for k, s in logged if k == "train/loss"}) == epochs
    tags = client.get_run(run_id).data.tags
    assert set(asked["tags"]) <= set(tags) and {"precision", "output_dir", "note", "git_dirty"} <= set(tags)
    files = _artifacts(client, run_id)
    assert set(asked["artifacts"]) <= files, set(asked["artifacts"]) - files
    assert {"metrics.json", "resnet34_localfft.pth", "checkpoints/config.yaml", "overrides.yaml"} <= files

    # the training thread's wait on the tracking server: each logger call, and the gaps between steps (these
    # include validation and the CPU that the restarting server takes; a write that waited out the retries on the
    # training thread would add 2+4+8+16 s at least)
    gaps = [b - a for a, b in zip(OUTAGE["step_ends"], OUTAGE["step_ends"][1:])]
    before = [g for g, t in zip(gaps, OUTAGE["step_ends"][1:]) if t < OUTAGE["killed_at"]]
    outage_s = OUTAGE["back_at"] - OUTAGE["killed_at"]
    print(f"\noutage: {outage_s:.1f} s; {n_steps} steps ({steps_after_kill} after the kill), {epochs} epochs, "
          f"{sum(logged.values())} metric values in {len(OUTAGE['call_seconds'])} logger calls logged and found, "
          f"{len(tags)} tags ({len(set(asked['tags']))} set after creation), {len(files)} artifacts; longest logger call "
          f"{max(OUTAGE['call_seconds']):.3f} s; longest gap between steps {max(gaps):.2f} s ({max(before):.2f} s "
          f"before the kill; a step sleeps 0.25 s); run {seconds:.1f} s")
    assert max(OUTAGE["call_seconds"]) < 1.0, f"a logger call waited {max(OUTAGE['call_seconds']):.1f} s"
    assert max(gaps) < max(before) + 8.0, f"training stalled {max(gaps):.1f} s between two steps"
