"""A training run's detector as an MLflow logged model: it loads with MLflow's own loaders, pickle-free, and scores
the test split as the run did; ``logger.register_as`` registers it, and ``task=evaluate`` reads it back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.entities import LoggedModelStatus
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from omegaconf import open_dict

from experiments.tasks.evaluate import evaluate
from experiments.tasks.train import BadRegistration, train
from experiments.training.builders import build_datamodule
from experiments.training.logged_model import (
    EXAMPLE_BATCH,
    MODEL_NAME,
    ProbabilityOutput,
    input_example,
    pinned,
)
from features.precision import as_unit_float
from tests.conftest import TINY, compose_config, make_genimage_tree

DATA = ["data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.num_workers=0",
        "diagnostics=false"]
SKLEARN = ["model=radial_angular_logreg", "model.estimator.features.n_radial=8",
           "model.estimator.features.n_angular=8"]
CNN = TINY[1:] + ["debug=fdr"]
REGISTERED = "tiny-logreg"


def _train(root: Path, overrides: list[str]) -> dict:
    tree = make_genimage_tree(root / "genimage", n=4)
    cfg = compose_config(DATA + [f"data.root={tree}"] + overrides, root, log_mlflow_model=True)
    train(cfg)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns.db'}")
    run = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])[0]
    return {"cfg": cfg, "client": client, "run": run, "out": Path(cfg.paths.output_dir)}


@pytest.fixture(scope="module")
def sklearn_run(tmp_path_factory) -> dict:
    return _train(tmp_path_factory.mktemp("logged_sklearn"), SKLEARN + [f"logger.register_as={REGISTERED}"])


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> dict:
    return _train(tmp_path_factory.mktemp("logged_cnn"), CNN)


def _test_split(trained: dict) -> tuple[np.ndarray, np.ndarray]:
    """The test split's preprocessed images (float in [0, 1]) in the order of ``predictions_test.csv``, and the
    probabilities the run wrote there."""
    with (trained["out"] / "predictions_test.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    datamodule = build_datamodule(trained["cfg"])
    datamodule.setup()
    images = {}
    for batch in datamodule.test_dataloader():
        for index, image in zip(batch["index"].tolist(), as_unit_float(batch["image"])):
            images[index] = image.numpy()
    return np.stack([images[int(r["index"])] for r in rows]), np.array([float(r["prob"]) for r in rows])


def _mlmodel(trained: dict) -> dict:
    uri = f"runs:/{trained['run'].info.run_id}/{MODEL_NAME}"
    return yaml.safe_load(Path(mlflow.artifacts.download_artifacts(f"{uri}/MLmodel",
                                                                   tracking_uri=_uri(trained))).read_text())


def _uri(trained: dict) -> str:
    return trained["client"].tracking_uri


def test_the_cnn_loads_pickle_free_and_scores_the_test_split_as_the_run(cnn_run, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # a pickled record would be refused
    with _use_tracking_uri(_uri(cnn_run)):
        model = mlflow.pytorch.load_model(f"runs:/{cnn_run['run'].info.run_id}/{MODEL_NAME}")
    images, written = _test_split(cnn_run)
    with torch.no_grad():
        prob = model(torch.from_numpy(images)).numpy()
    assert prob.shape == written.shape
    np.testing.assert_allclose(prob, written, rtol=0, atol=1e-6)
    flavor = _mlmodel(cnn_run)
    assert flavor["flavors"]["pytorch"] and "python_function" in flavor["flavors"]
    assert json.loads(flavor["signature"]["inputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3, 32, 32]}}]
    assert flavor["saved_input_example_info"]
    artifacts = mlflow.artifacts.list_artifacts(f"runs:/{cnn_run['run'].info.run_id}/{MODEL_NAME}/data",
                                                tracking_uri=_uri(cnn_run))
    assert [Path(a.path).name for a in artifacts] == ["model.pt2"]  # no model.pth pickle


def test_the_pipeline_loads_from_skops_and_scores_the_test_split_as_the_run(sklearn_run):
    with _use_tracking_uri(_uri(sklearn_run)):
        pipeline = mlflow.sklearn.load_model(f"runs:/{sklearn_run['run'].info.run_id}/{MODEL_NAME}")
        served_model = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1")
    images, written = _test_split(sklearn_run)
    np.testing.assert_allclose(pipeline.predict_proba(images)[:, 1], written, rtol=0, atol=1e-12)
    served = served_model.predict(images[:3])
    np.testing.assert_allclose(np.asarray(served)[:, 1], written[:3], rtol=0, atol=1e-12)
    flavor = _mlmodel(sklearn_run)["flavors"]["sklearn"]
    assert flavor["serialization_format"] == "skops" and flavor["skops_trusted_types"]


def test_register_as_makes_version_1_whose_evaluation_matches_the_run(sklearn_run, tmp_path):
    client = sklearn_run["client"]
    version = client.get_model_version(REGISTERED, "1")
    assert version.run_id == sklearn_run["run"].info.run_id
    cfg = compose_config(DATA + [f"data.root={sklearn_run['cfg'].data.root}", "task=evaluate",
                                 f"ckpt=models:/{REGISTERED}/1"], tmp_path)
    with open_dict(cfg):
        cfg.logger.tracking_uri = _uri(sklearn_run)
    metrics = evaluate(cfg)
    assert metrics["test/auc"] == pytest.approx(sklearn_run["run"].data.metrics["test/auc"], abs=1e-12)


def test_the_run_logs_its_three_splits_as_datasets(sklearn_run):
    from experiments.training.logged_datasets import split_digest

    inputs = sklearn_run["client"].get_run(sklearn_run["run"].info.run_id).inputs.dataset_inputs
    contexts = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in inputs}
    assert set(contexts) == {"train", "val", "test"}
    datamodule = build_datamodule(sklearn_run["cfg"])
    datamodule.check_layout()
    for split, dataset in contexts.items():
        assert dataset.name == f"genimage_tiny-{split}"
        assert dataset.digest == split_digest(datamodule.splits[split])


def test_register_as_is_checked_before_training(tmp_path):
    cfg = compose_config(DATA + ["data.root=/nowhere", "logger.register_as=a/b"], tmp_path, log_mlflow_model=True)
    with pytest.raises(BadRegistration, match="'/', '@' or ':'"):
        train(cfg)
    cfg = compose_config(DATA + ["data.root=/nowhere", "logger.register_as=ok"], tmp_path)
    with pytest.raises(BadRegistration, match="logger.log_mlflow_model=false"):
        train(cfg)


def test_the_example_is_a_float_batch_of_the_crop_and_the_wrapper_returns_p_synthetic():
    example = input_example(24)
    assert example.shape == (EXAMPLE_BATCH, 3, 24, 24) and example.dtype == np.float32
    assert 0.0 <= example.min() and example.max() <= 1.0
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 1), torch.nn.Flatten(0))
    prob = ProbabilityOutput(net)(torch.from_numpy(example))
    torch.testing.assert_close(prob, torch.sigmoid(net(torch.from_numpy(example))))
    assert pinned(["torch"])[0].startswith("torch==") and "+" not in pinned(["torch"])[0]
    assert pinned(["no-such-distribution-here"]) == ["no-such-distribution-here"]


def test_detect_and_ood_stress_take_the_registered_model(sklearn_run, tmp_path):
    from experiments.tasks.detect import detect
    from experiments.tasks.ood_stress import resolve_detectors

    run = sklearn_run["run"]
    folder = Path(sklearn_run["cfg"].data.root) / "gen_a" / "val" / "ai"
    result = detect(f"models:/{REGISTERED}/1", folder, tracking_uri=_uri(sklearn_run), progress=False)
    assert len(result.rows) == 4
    assert result.data_stats is not None and result.val_threshold is not None  # the run's files came with it
    cfg = compose_config(["task=ood_stress", f"ckpt=[models:/{REGISTERED}/1]"], tmp_path)
    detectors = resolve_detectors(cfg, sklearn_run["client"], _uri(sklearn_run))
    assert [(d.ref, d.experiment_id) for d in detectors] == [(run.info.run_id, run.info.experiment_id)]


class _Unexportable:
    """A kind whose detector cannot be logged as an MLflow model."""

    def log_mlflow_model(self, model, example, **log_args):
        raise RuntimeError("this net does not export")


def test_a_detector_that_cannot_be_logged_keeps_the_run_unless_it_was_to_be_registered(sklearn_run, caplog):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from experiments.tasks.train import _log_model

    client = sklearn_run["client"]
    experiment = client.create_experiment("unexportable")
    logger = SimpleNamespace(experiment=client, run_id=client.create_run(experiment).info.run_id)
    cfg = OmegaConf.create({"logger": {"log_mlflow_model": True, "register_as": None}, "data": {"crop_size": 8}})
    _log_model(cfg, _Unexportable(), None, logger)
    run = client.get_run(logger.run_id)
    assert run.data.tags["mlflow_model_error"] == "RuntimeError: this net does not export"
    assert run.info.status == "RUNNING" and "could not be logged as an MLflow model" in caplog.text
    cfg.logger.register_as = "never-registered"
    with pytest.raises(RuntimeError, match="does not export"):
        _log_model(cfg, _Unexportable(), None, logger)
    assert client.get_run(logger.run_id).info.status == "FAILED"
    models = client.search_logged_models(experiment_ids=[experiment])
    assert len(models) == 2 and all(m.status == LoggedModelStatus.FAILED for m in models)
