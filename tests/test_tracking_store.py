"""Parallel sweeps: the SQLite store is prepared before the jobs start, and jobs in joblib workers can start
DataLoader workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from hydra.utils import instantiate

from experiments.runs import PrepareTrackingStore, prepare_store
from experiments.tracking import resolve_tracking_uri
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
    parents = [r for r in runs if r.data.tags["task"] == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    jobs = [r for r in runs if r.data.tags["task"] == "train"]
    assert sorted((r.info.run_name, r.info.status) for r in jobs) == [
        ("resnet34_localfft-seed1", "FINISHED"), ("resnet34_localfft-seed2", "FINISHED")]
    # the worker processes got the parent's id from the launching process
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parents[0].info.run_id}


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


@pytest.mark.slow
def test_a_sweep_is_a_parent_run_and_report_and_compare_select_its_children(tmp_path):
    """`run.py -m model=a,b` with Hydra's basic launcher (jobs in the launching process): one parent run tagged
    task=sweep, the two jobs' runs its children; report and compare with parent= read those two only."""
    from experiments.runs import finished_training_runs
    from experiments.tasks.compare import compare
    from experiments.tasks.report import report

    tree = make_genimage_tree(tmp_path / "genimage", n=6, size=32)
    data = ["data=genimage_tiny", f"data.root={tree}", "data.crop_size=32", "data.resize_size=null",
            "data.num_workers=0", "diagnostics=false", "stats.bootstrap_resamples=0"]
    env = {**os.environ, "SUITE_ROOT": str(tmp_path)}
    env.pop("SUITE_PARENT_RUN_ID", None)
    done = subprocess.run([sys.executable, str(REPO / "run.py"), "-m", "model=radial_angular_logreg,fft_random_forest",
                           *data], cwd=tmp_path, text=True, capture_output=True, timeout=600, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("detectors-genimage_tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("task") == "sweep"]
    assert len(parents) == 1, [(r.info.run_name, r.data.tags.get("task")) for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_jobs"] == "2"
    assert f"parent MLflow run {parent.info.run_id}" in done.stdout
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["model"] for r in children) == ["fft_random_forest", "radial_angular_logreg"]
    assert all(r.info.status == "FINISHED" and r.data.tags["task"] == "train" for r in children)
    assert {r.data.tags["overrides"].split(" ")[0] for r in children} == {"model=radial_angular_logreg",
                                                                          "model=fft_random_forest"}
    # the parent never enters a comparison of training runs
    assert parent.info.run_id not in {r.info.run_id for r in finished_training_runs(client, experiment.name)}

    # a later run of one of the detectors, outside the sweep: the latest run, but not the sweep's
    stray = client.create_run(experiment.experiment_id, tags={"task": "train", "model": "radial_angular_logreg",
                                                             "seed": "42"})
    client.log_metric(stray.info.run_id, "test/auc", 0.123)
    client.set_terminated(stray.info.run_id, "FINISHED")
    child_ids = {r.info.run_id for r in children}
    everything = report(compose_config(["task=report"] + data, tmp_path))
    assert stray.info.run_id in {r.run_id for r in everything["rows"]}
    swept = report(compose_config(["task=report", f"parent={parent.info.run_id}"], tmp_path))
    assert {r.run_id for r in swept["rows"]} == child_ids
    compared = compare(compose_config(["task=compare", f"parent={parent.info.run_id}"], tmp_path))
    assert {d.run for d in compared["detectors"]} == child_ids
    logged = client.get_run(compared["run_id"])
    assert client.get_experiment(logged.info.experiment_id).name == "compare-detectors-genimage_tiny"


def test_parent_must_name_a_run(tmp_path):
    from experiments.runs import NotASweep
    from experiments.tasks.report import report

    cfg = compose_config(["task=report"], tmp_path)
    cfg.parent = "x' or tags.task != 'y"  # never pasted into a search filter
    with pytest.raises(NotASweep, match="not an MLflow run id"):
        report(cfg)
    with pytest.raises(NotASweep, match="no such run"):
        report(compose_config(["task=report", f"parent={'0' * 32}"], tmp_path))


def test_the_sweep_callback_opens_a_parent_passes_its_id_and_closes_it(tmp_path, monkeypatch):
    """In-process (the basic launcher's way): runs made between start and end are children; a failed child
    fails the parent; the id leaves the environment at the end."""
    from experiments.runs import SweepParentRun
    from experiments.tracking import PARENT_RUN_ENV, create_run, end_run, mlflow_client

    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    cfg = compose_config(["experiment=demo"], tmp_path)
    client = mlflow_client(cfg.logger.tracking_uri)
    for child_status in ("FINISHED", "FAILED"):
        callback = instantiate(cfg.hydra.callbacks.sweep_parent_run)
        callback.on_multirun_start(config=cfg)
        parent = os.environ[PARENT_RUN_ENV]
        children = [create_run(cfg, "detectors-demo", f"job{i}", {"task": "train"}) for i in range(2)]
        end_run(client, children[0])
        end_run(client, children[1], child_status)
        callback.on_multirun_end(config=cfg)
        assert PARENT_RUN_ENV not in os.environ
        run = client.get_run(parent)
        assert run.data.tags["task"] == "sweep" and run.info.status == child_status
        assert run.data.tags["sweep_jobs"] == "2"
        assert {client.get_run(c).data.tags["mlflow.parentRunId"] for c in children} == {parent}


def test_system_metrics_are_on_for_gpu_trainers_and_when_asked():
    from experiments.tracking import wants_system_metrics

    assert wants_system_metrics(None, "gpu") and wants_system_metrics(None, "cuda")
    assert not wants_system_metrics(None, "cpu")
    assert wants_system_metrics(True, "cpu") and not wants_system_metrics(False, "gpu")


def test_system_metrics_of_a_run_on_cpu(tmp_path, monkeypatch):
    """logger.system_metrics=true: MLflow's monitor samples system/* metrics into the run until it ends."""
    pytest.importorskip("psutil", reason="psutil is not installed (the error without it: test_system_metrics_without_psutil_name_what_they_need)")
    import time

    from experiments.tracking import build_logger, end_run

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    cfg = compose_config(["experiment=demo", "logger.system_metrics=true", "trainer.accelerator=cpu"], tmp_path)
    logger = build_logger(cfg)
    time.sleep(1.5)
    end_run(logger.experiment, logger.run_id)
    metrics = logger.experiment.get_run(logger.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics), metrics
    assert len(logger.experiment.get_metric_history(logger.run_id, "system/cpu_utilization_percentage")) >= 2
    time.sleep(0.5)  # stopped at the end of the run: no sample after it
    after = logger.experiment.get_metric_history(logger.run_id, "system/cpu_utilization_percentage")
    assert len(after) == len(logger.experiment.get_metric_history(logger.run_id, "system/cpu_utilization_percentage"))


def test_system_metrics_without_psutil_name_what_they_need(tmp_path, monkeypatch):
    import builtins

    from experiments.tracking import SystemMetricsUnavailable, build_logger

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil" or name.startswith("mlflow.system_metrics"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    cfg = compose_config(["experiment=demo", "logger.system_metrics=true", "trainer.accelerator=cpu"], tmp_path)
    with pytest.raises(SystemMetricsUnavailable, match="pip install psutil"):
        build_logger(cfg)
    monkeypatch.setattr(builtins, "__import__", real_import)
    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(cfg.logger.tracking_uri))
    experiment = client.get_experiment_by_name("detectors-demo")
    assert experiment is None or not client.search_runs([experiment.experiment_id])  # refused before any run


def test_the_http_policy_sets_mlflows_variables_and_names_an_unknown_setting(monkeypatch):
    from experiments.tracking import HTTP_ENV, UnknownTrackingSetting, apply_http_policy

    for variable in HTTP_ENV.values():
        monkeypatch.setenv(variable, "1")  # restored when the test ends
        monkeypatch.delenv(variable)
    apply_http_policy({"max_retries": 3, "backoff_factor": 1, "backoff_jitter": None, "timeout": 7})
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 3 and MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 7
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER" not in os.environ  # null: MLflow's default
    with pytest.raises(UnknownTrackingSetting, match="logger.http.retries is not a setting"):
        apply_http_policy({"retries": 3})
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
