"""One real training job through run.py's composed config, on CPU, MLflow in a tmp dir."""

from __future__ import annotations

import mlflow

from experiments.tasks.train import train
from tests.conftest import TINY, assert_source_tags, compose_config



def test_fast_dev_run_through_composed_config(genimage_tree, tmp_path):
    overrides = TINY + [f"data.root={genimage_tree}", "debug=fdr", "+logger.tags.note=smoke"]
    cfg = compose_config(overrides, tmp_path)
    train(cfg)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("detectors-genimage_tiny")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model/name"] == "resnet34_localfft"
    assert run.data.params["seed"] == "42"
    assert "test/auc" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "resnet34_localfft.pth" in artifacts and "config.yaml" in artifacts
    assert_source_tags(client, run.info.run_id, overrides, {"note": "smoke", "task": "train", "model": "resnet34_localfft"})
    assert "mlflow.parentRunId" not in run.data.tags  # no sweep, no parent
