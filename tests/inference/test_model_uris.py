"""``models:/`` and ``runs:/`` references resolve to the training run behind them, or fail naming what exists."""

from __future__ import annotations

import mlflow
import pytest

from experiments.inference.loading import CheckpointNotFound, load_detector, resolve_reference
from experiments.inference.model_uris import ModelNotFound, is_model_uri, source_run_id
from experiments.errors import is_user_error


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A run with a logged model named ``model``, registered as ``det`` version 1 with the alias ``champion``."""
    tmp_path = tmp_path_factory.mktemp("model_uris")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("detectors-t", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    model = client.create_logged_model(experiment_id=experiment, name="model", source_run_id=run_id)
    client.create_registered_model("det")
    version = client.create_model_version("det", model.artifact_location, run_id=run_id, model_id=model.model_id)
    client.set_registered_model_alias("det", "champion", version.version)
    return {"uri": uri, "client": client, "run_id": run_id, "model_id": model.model_id}


def test_each_form_names_the_run_that_logged_the_model(store):
    run_id, uri = store["run_id"], store["uri"]
    for ref in ("models:/det/1", "models:/det@champion", f"runs:/{run_id}/model", f"runs:/{run_id}",
                f"models:/{store['model_id']}"):
        assert is_model_uri(ref)
        assert source_run_id(ref, uri) == run_id, ref
        assert resolve_reference(ref, uri) == run_id
    assert resolve_reference("logs/train/runs/x", uri) == "logs/train/runs/x"  # a folder stays a folder
    assert not is_model_uri(run_id)


@pytest.mark.parametrize("ref, expected", [
    ("models:/nothing/1", ["no registered model 'nothing'", "registered: det", "make mlflow-ui",
                           "logger.register_as"]),
    ("models:/det/7", ["has no version 7", "versions: 1"]),
    ("models:/det@nope", ["has no alias 'nope'", "aliases: champion"]),
    ("models:/det", ["models:/<name>/<version>"]),
    ("runs:/0123456789abcdef0123456789abcdef/model", ["no MLflow run 0123456789abcdef0123456789abcdef",
                                                      "task=runs"]),
    ("runs:/short/model", ["not a model reference"]),
    ("models:/m-0123456789abcdef0123456789abcdef", ["no logged model m-0123456789abcdef0123456789abcdef"]),
])
def test_an_unknown_reference_is_a_user_error_naming_it(store, ref, expected):
    with pytest.raises(ModelNotFound) as raised:
        source_run_id(ref, store["uri"])
    assert is_user_error(raised.value)
    for text in expected:
        assert text in str(raised.value), str(raised.value)


def test_a_model_of_a_run_without_the_suite_s_files_says_so(store):
    with pytest.raises(CheckpointNotFound, match="has no weights/config artifacts"):
        load_detector("models:/det@champion", store["uri"])
