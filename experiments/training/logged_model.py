"""A trained detector as an MLflow 3 *logged model*: ``runs:/<run id>/model``, with a signature and an input example.

Every training run logs its detector under the name ``model`` (:data:`MODEL_NAME`), so ``runs:/<run id>/model``
resolves, and ``logger.register_as=<name>`` adds it to the model registry as a new version of ``<name>``
(``models:/<name>/<version>``). Both kinds take a float32 batch ``(B, 3, crop, crop)`` in ``[0, 1]``, the tensors
the detector scores after its preprocessing, and the input example is such a batch of two images.

Serialisation, pickle-free as the run's own weights files are:

* CNN detectors: ``mlflow.pytorch.log_model(serialization_format="pt2")``, a ``torch.export`` program
  (``torch.export.save``) of the net followed by its sigmoid, so the model returns P(synthetic) ``(B,)``.
  MLflow's default ``"pickle"`` format pickles the whole module with cloudpickle; a ``pt2`` archive holds the
  graph as JSON and the weights as tensors, and MLflow 3.17 checks that it holds no other pickled record before
  loading it when ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``. ``mlflow.pytorch.load_model`` returns the
  exported ``GraphModule`` (no ``detectors`` code is needed to load it, only torch). The export runs on a CPU,
  float32 copy of the net with a dynamic batch dimension (``torch.export.Dim.AUTO``; hence a batch of two).
* scikit-learn pipelines: ``mlflow.sklearn.log_model(serialization_format="skops")`` with the suite's skops
  allow-list (:func:`experiments.training.sklearn_io.trusted_types`) recorded as ``skops_trusted_types``;
  ``pyfunc`` serves ``predict_proba`` (``(B, 2)``: P(real), P(synthetic)). skops rebuilds only the allowed types;
  MLflow 3.17 nonetheless refuses to load any scikit-learn model, skops included, under
  ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` (its default is ``true``), since the allow-list is read from the
  model's own ``MLmodel``; the suite's loader (:func:`experiments.training.sklearn_io.load_estimator`) checks the
  types itself.

The pip requirements are given, not inferred: MLflow infers them by loading the model again in a subprocess,
which costs more than the export itself.
"""

from __future__ import annotations

import copy
import importlib.metadata
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

#: the logged model's name in its run: ``runs:/<run id>/model``
MODEL_NAME = "model"
#: images in the input example: ``torch.export`` keeps a batch dimension of 1 static, so two
EXAMPLE_BATCH = 2
#: the suite's distribution, which the scikit-learn pipelines' feature step comes from
SUITE_DISTRIBUTION = "spectral-detector-suite"


class ProbabilityOutput(torch.nn.Module):
    """A CNN detector followed by its sigmoid: float images in ``[0, 1]`` -> P(synthetic) ``(B,)`` in float32,
    as :meth:`experiments.training.lit_module.DetectorModule.predict_step` scores them."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(images).float())


def input_example(crop_size: int, batch: int = EXAMPLE_BATCH, seed: int = 0) -> np.ndarray:
    """A seeded float32 batch ``(batch, 3, crop_size, crop_size)`` in ``[0, 1]``: what the logged model takes."""
    return np.random.default_rng(seed).random((batch, 3, int(crop_size), int(crop_size)), dtype=np.float32)


def pinned(distributions: Iterable[str]) -> list[str]:
    """``name==version`` of each installed distribution (a local label such as ``+cu130`` dropped: no index
    serves it); a distribution that is not installed is listed by name alone."""
    out = []
    for name in distributions:
        try:
            out.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def log_torch_model(net: torch.nn.Module, example: np.ndarray, **log_args: Any):
    """Log ``net`` as a ``pt2`` program returning P(synthetic) (see the module's docstring); ``log_args`` are
    :func:`log_model_args`. Returns MLflow's ``ModelInfo``."""
    import mlflow
    from mlflow.models import infer_signature

    cpu = copy.deepcopy(net).to("cpu", torch.float32).to(memory_format=torch.contiguous_format).eval()
    model = ProbabilityOutput(cpu).eval()
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    return mlflow.pytorch.log_model(model, input_example=example, signature=infer_signature(example, output),
                                    serialization_format="pt2", pip_requirements=pinned(["torch"]), **log_args)


def log_sklearn_model(pipeline, example: np.ndarray, **log_args: Any):
    """Log a fitted pipeline with skops (see the module's docstring); ``log_args`` are :func:`log_model_args`."""
    import mlflow
    import skops.io as sio
    from mlflow.models import infer_signature

    from experiments.training.sklearn_io import trusted_types

    output = pipeline.predict_proba(example)
    trusted = trusted_types(sio.get_untrusted_types(data=sio.dumps(pipeline)), "the fitted pipeline")
    requirements = pinned(["scikit-learn", "skops", "numpy", "torch", SUITE_DISTRIBUTION])
    return mlflow.sklearn.log_model(pipeline, input_example=example, signature=infer_signature(example, output),
                                    serialization_format="skops", skops_trusted_types=trusted,
                                    pyfunc_predict_fn="predict_proba", pip_requirements=requirements, **log_args)


def log_model_args(client: Any, run_id: str, registered_model_name: str | None = None) -> dict[str, Any]:
    """The arguments every ``log_model`` call gets: the run, the model's name, an optional registration.

    The logged model is created here, in the run's own experiment (MLflow would otherwise take the active
    experiment of the process, or ``MLFLOW_EXPERIMENT_ID``), and named :data:`MODEL_NAME`.
    """
    run = client.get_run(run_id)
    created = client.create_logged_model(experiment_id=run.info.experiment_id, name=MODEL_NAME,
                                         source_run_id=run_id)
    return {"name": MODEL_NAME, "run_id": run_id, "model_id": created.model_id,
            "registered_model_name": registered_model_name, "await_registration_for": 0}


def log_detector_model(kind, model: Any, crop_size: int, client: Any, run_id: str,
                       registered_model_name: str | None = None):
    """Log a fitted detector of ``kind`` (:meth:`~experiments.training.kinds.DetectorKind.log_mlflow_model`) as
    ``runs:/<run_id>/model`` in the store of ``client`` (the run's ``MlflowClient``), registered as
    ``registered_model_name`` when given; returns MLflow's ``ModelInfo`` and marks the logged model READY."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(client.tracking_uri):  # log_model and the registry use the process's store
        args = log_model_args(client, run_id, registered_model_name)
        try:
            info = kind.log_mlflow_model(model, input_example(crop_size), **args)
        except BaseException:
            client.finalize_logged_model(args["model_id"], LoggedModelStatus.FAILED)
            raise
        client.finalize_logged_model(args["model_id"], LoggedModelStatus.READY)
    return info
