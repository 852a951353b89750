"""Parallel sweeps: the SQLite store is prepared before the jobs start, and jobs in joblib workers can start
DataLoader workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
from hydra.utils import instantiate

from experiments.tracking import PrepareTrackingStore, prepare_store, resolve_tracking_uri
from tests.conftest import compose_config, make_genimage_tree

REPO = Path(__file__).resolve().parents[1]

CREATE_RUN = """
import sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run(experiment_id=sys.argv[2], run_name=sys.argv[3]):
    mlflow.log_metric("x", 1.0)
"""


def test_the_callback_is_registered_and_creates_tables_and_experiment(tmp_path):
    cfg = compose_config(["experiment=demo"], tmp_path)
    callback = instantiate(cfg.hydra.callbacks.prepare_tracking_store)
    assert isinstance(callback, PrepareTrackingStore)
    assert not (tmp_path / "mlruns.db").exists()
    callback.on_multirun_start(config=cfg)
    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(cfg.logger.tracking_uri))
    experiment = client.get_experiment_by_name("detectors-demo")
    assert experiment is not None and experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert prepare_store(cfg.logger) == experiment.experiment_id  # idempotent


def test_jobs_started_together_on_a_prepared_store_all_log(tmp_path):
    cfg = compose_config(["experiment=demo"], tmp_path)
    experiment_id = prepare_store(cfg.logger)
    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    jobs = [subprocess.Popen([sys.executable, "-c", CREATE_RUN, uri, experiment_id, f"job{i}"], cwd=tmp_path,
                             stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [job.communicate(timeout=120)[1] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), "\n".join(errors)
    runs = mlflow.MlflowClient(tracking_uri=uri).search_runs([experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"job{i}" for i in range(4)]


def test_servers_are_left_alone(tmp_path):
    cfg = compose_config(["logger.tracking_uri=http://127.0.0.1:9"], tmp_path)
    assert prepare_store(cfg.logger) is None
    PrepareTrackingStore().on_multirun_start(config=cfg)  # no exception, nothing created
    assert not Path(tmp_path / "mlruns.db").exists()


def test_local_parallel_sweep_on_a_fresh_store(tmp_path):
    """The real joblib launcher, two jobs at once, on a store that does not exist yet, with loader workers."""
    tree = make_genimage_tree(tmp_path / "genimage", n=6, size=32)
    overrides = ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
                 "model=resnet34_localfft", "seed=1,2", "data=genimage_tiny", f"data.root={tree}",
                 "data.crop_size=32", "data.resize_size=null", "data.batch_size=8", "data.num_workers=1",
                 "data.persistent_workers=false", "model.backbone.name=resnet10t", "model.backbone.pretrained=false", "model.net.head_hidden=16",
                 "debug=cpu", "trainer.max_epochs=1", "diagnostics=false", "callbacks.progress_bar=null"]
    done = subprocess.run([sys.executable, str(REPO / "run.py"), "-m", *overrides], cwd=tmp_path, text=True,
                          capture_output=True, timeout=600, env={**os.environ, "SUITE_ROOT": str(tmp_path)})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "duplicate column" not in output and "has no attribute 'env'" not in output
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        ("resnet34_localfft-seed1", "FINISHED"), ("resnet34_localfft-seed2", "FINISHED")]


def test_the_early_store_check_opens_a_local_store_and_names_one_that_cannot_be(tmp_path):
    import pytest

    from experiments.tracking import TrackingUnavailable, check_store

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert check_store(uri) == uri and (tmp_path / "mlruns.db").is_file()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TrackingUnavailable, match="logger.tracking_uri=sqlite:///.*cannot be opened"):
        check_store(f"sqlite:///{tmp_path / 'file' / 'mlruns.db'}")
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9 is not reachable"):
        check_store("http://127.0.0.1:9")


def test_run_queries_page_through_every_run(tmp_path, monkeypatch):
    from experiments import runs as run_queries

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'paged.db'}")
    exp = client.create_experiment("detectors-paged", artifact_location=(tmp_path / "art").as_uri())
    made = []
    for i in range(5):
        run = client.create_run(exp, tags={"task": "train", "model": f"m{i}"}, start_time=1_000 + i)
        client.set_terminated(run.info.run_id, "FINISHED")
        made.append(run.info.run_id)
    client.create_run(exp, tags={"task": "train", "model": "running"}, start_time=2_000)  # not finished
    seen_pages = []
    search = client.search_runs

    def recording(*args, **kwargs):
        page = search(*args, **kwargs)
        seen_pages.append(len(page))
        return page

    monkeypatch.setattr(client, "search_runs", recording)
    monkeypatch.setattr(run_queries, "PAGE_SIZE", 2)
    found = run_queries.finished_training_runs(client, "detectors-paged")
    assert [r.info.run_id for r in found] == made[::-1]  # all five, newest first
    assert seen_pages[:3] == [2, 2, 1]
    every = list(run_queries.all_runs(client, [exp], page_size=4))
    assert len(every) == 6
