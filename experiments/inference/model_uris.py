"""MLflow model references as detector references: ``models:/`` and ``runs:/`` URIs -> the training run behind them.

``task=evaluate``, ``task=ood_stress`` and ``detect`` take, beside a run folder, a weights file and a run id:

* ``runs:/<run id>/model``: the model a training run logged (:mod:`experiments.training.logged_model`);
* ``models:/<name>/<version>`` and ``models:/<name>@<alias>``: a version of a registered model
  (``logger.register_as=<name>``; an alias is set in the MLflow UI or with
  ``MlflowClient().set_registered_model_alias``);
* ``models:/<model id>`` (``m-...``): a logged model by its id.

Each resolves to the id of the training run that logged the model; the detector is then loaded from that run as
from its id: its config, its weights file, its calibration and its image sizes, the files that travel with it.
An unknown name, version, alias or run is a :class:`ModelNotFound` naming it and how to list what exists; the
store is asked once (an HTTP server that does not answer fails at once, see
:func:`experiments.tracking.check_tracking_server`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from experiments.errors import UserError
from experiments.tracking import RUN_ID, check_tracking_server, mlflow_client

#: a reference this module resolves
MODEL_URI = re.compile(r"^(models|runs):/")
_RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})(?:/model)?/?$")
_LOGGED_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")
#: how to see the registered models and their versions
LIST_HINT = ("list them in the MLflow UI (`make mlflow-ui`, the Models page) or with "
             "`python -c \"import mlflow; print([m.name for m in mlflow.MlflowClient('<tracking uri>')"
             ".search_registered_models()])\"`")


class ModelNotFound(LookupError, UserError):
    """A ``models:/`` or ``runs:/`` reference names no model of the store."""


def is_model_uri(ref: str | Path) -> bool:
    """Whether ``ref`` is a ``models:/`` or ``runs:/`` URI (not a file of that name)."""
    return bool(MODEL_URI.match(str(ref))) and not Path(str(ref)).exists()


def source_run_id(ref: str, tracking_uri: str | None = None) -> str:
    """The id of the training run that logged the model ``ref`` refers to (see the module's docstring)."""
    ref = str(ref)
    client = mlflow_client(tracking_uri)
    check_tracking_server(client.tracking_uri)
    runs = _RUNS_URI.match(ref)
    if runs:
        return _existing_run(client, runs.group(1), ref)
    if not ref.startswith("models:/"):
        raise ModelNotFound(f"{ref} is not a model reference: use runs:/<run id>/model, models:/<name>/<version> "
                            "or models:/<name>@<alias>")
    body = ref[len("models:/"):].strip("/")
    if _LOGGED_MODEL_ID.match(body):
        return _logged_model_run(client, body, ref)
    name, sep, alias = body.partition("@")
    if not sep:
        name, _, version = body.rpartition("/")
        if not name or not version.isdigit():
            raise ModelNotFound(f"{ref}: a registered model is named models:/<name>/<version> (a number) or "
                                "models:/<name>@<alias>")
    _registered_model(client, name, ref)
    version_entry = _version_by_alias(client, name, alias, ref) if sep else _version(client, name, version, ref)
    run_id = version_entry.run_id
    if not run_id and getattr(version_entry, "model_id", None):
        return _logged_model_run(client, version_entry.model_id, ref)
    if not run_id:
        raise ModelNotFound(f"{ref} was not logged by a training run of this suite (version "
                            f"{version_entry.version} has no source run), so its config and calibration are unknown")
    return _existing_run(client, run_id, ref)


def _registered_model(client: Any, name: str, ref: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise ModelNotFound(f"{ref}: no registered model '{name}' in {client.tracking_uri} (registered: "
                            f"{', '.join(known) or 'none'}); {LIST_HINT}. A training run registers its detector "
                            "with logger.register_as=<name>") from None


def _version(client: Any, name: str, version: str, ref: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise ModelNotFound(f"{ref}: registered model '{name}' has no version {version} (versions: "
                            f"{', '.join(map(str, versions)) or 'none'}); {LIST_HINT}") from None


def _version_by_alias(client: Any, name: str, alias: str, ref: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        aliases = sorted(client.get_registered_model(name).aliases)
        raise ModelNotFound(f"{ref}: registered model '{name}' has no alias '{alias}' (aliases: "
                            f"{', '.join(aliases) or 'none'}); set one with MlflowClient().set_registered_model_"
                            f"alias('{name}', '{alias}', <version>), or {LIST_HINT}") from None


def _logged_model_run(client: Any, model_id: str, ref: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        run_id = client.get_logged_model(model_id).source_run_id
    except MlflowException:
        raise ModelNotFound(f"{ref}: no logged model {model_id} in {client.tracking_uri}; the models a training "
                            "run logged are on its page in the MLflow UI (`make mlflow-ui`)") from None
    if not run_id:
        raise ModelNotFound(f"{ref}: logged model {model_id} has no source run, so its config is unknown")
    return _existing_run(client, run_id, ref)


def _existing_run(client: Any, run_id: str, ref: str) -> str:
    from mlflow.exceptions import MlflowException

    if not RUN_ID.match(run_id):
        raise ModelNotFound(f"{ref}: {run_id} is not an MLflow run id (32 hex characters)")
    try:
        client.get_run(run_id)
    except MlflowException:
        raise ModelNotFound(f"{ref}: no MLflow run {run_id} in {client.tracking_uri}; `python run.py task=runs` "
                            "lists the training runs") from None
    return run_id
