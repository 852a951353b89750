"""The data a training run saw, as MLflow dataset inputs: one per split, on the run's page in the MLflow UI.

Each split is an ``mlflow.data`` dataset (:class:`SplitDataset`, a :class:`~mlflow.data.meta_dataset.MetaDataset`:
metadata only, the images stay where they are) logged with the context tag ``mlflow.data.context`` =
``train`` / ``val`` / ``test``, as ``mlflow.log_input`` records one (MLflow's dataset tracking):

* name ``<data.name>-<split>``;
* digest: the split's file-list key (:func:`experiments.data.cache.file_list_key` of its samples: path, size,
  modification time, label and generator of every file), so two runs with the same digest read the same files;
* source: ``data.root``, relative to the project root when it lies inside it (``data/demo``), so every clone
  logs the same source, and absolute otherwise;
* profile: images, real and synthetic counts, overall and per generator.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from experiments.data.cache import file_list_key
from experiments.data.layouts import Sample
from experiments.process import project_root

#: the header of a split's digest (:func:`split_digest`)
DIGEST_HEADER = "split file list"
#: MLflow's tag for the role of a dataset in a run: ``mlflow.data.context``
CONTEXT_TAG = MLFLOW_DATASET_CONTEXT


class SplitDataset(MetaDataset):
    """One split of a dataset as MLflow metadata: name, digest, source and a profile of its counts."""

    def __init__(self, source: LocalArtifactDatasetSource, name: str, digest: str, profile: Mapping[str, Any]):
        self._profile = dict(profile)
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        """``images``, ``real``, ``synthetic`` and ``generators`` (``{generator: {real, synthetic}}``)."""
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile, sort_keys=True)}


def split_digest(samples: Sequence[Sample]) -> str:
    """The split's file-list key (24 hex characters; see the module's docstring)."""
    return file_list_key(DIGEST_HEADER, samples)


def relative_source(root: str | Path) -> str:
    """``root`` relative to the project root (POSIX) when it lies inside it, else its absolute path."""
    path, base = Path(root).expanduser().resolve(), project_root().resolve()
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else path.as_posix()


def split_profile(samples: Sequence[Sample]) -> dict[str, Any]:
    """Counts of a split: ``images``, ``real`` (label 0), ``synthetic`` (label 1), and the same per generator."""
    counts = Counter((s.generator, s.label) for s in samples)
    generators = sorted({g for g, _ in counts})
    return {"images": len(samples), "real": sum(s.label == 0 for s in samples),
            "synthetic": sum(s.label == 1 for s in samples),
            "generators": {g: {"real": counts[(g, 0)], "synthetic": counts[(g, 1)]} for g in generators}}


def split_datasets(data_name: str, root: str | Path, splits: Mapping[str, Sequence[Sample]]) -> dict[str, SplitDataset]:
    """One :class:`SplitDataset` per split, keyed by split."""
    source = LocalArtifactDatasetSource(relative_source(root))
    return {split: SplitDataset(source, f"{data_name}-{split}", split_digest(samples), split_profile(samples))
            for split, samples in splits.items()}


def log_split_datasets(client: Any, run_id: str, data_name: str, root: str | Path,
                       splits: Mapping[str, Sequence[Sample]]) -> dict[str, SplitDataset]:
    """Log every split as a dataset input of the run (``client.log_inputs``: ``client`` is the run's
    ``MlflowClient``, e.g. the Lightning ``MLFlowLogger.experiment``), tagged with its split as context.

    The jobs of a parallel sweep log the same datasets into one experiment at the same moment. A SQL store adds a
    dataset to the experiment the first time a run logs it, and the job that loses that race gets a unique
    constraint error; logging again then finds the dataset in place. Each such failure means one more of
    the splits' datasets now exists, so at most one attempt per split is repeated.
    """
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    datasets = split_datasets(data_name, root, splits)
    inputs = [DatasetInput(d._to_mlflow_entity(), tags=[InputTag(CONTEXT_TAG, split)]) for split, d in datasets.items()]
    for attempt in range(len(inputs) + 1):
        try:
            client.log_inputs(run_id, datasets=inputs)
            break
        except MlflowException as err:
            raced = "UNIQUE constraint" in str(err) or "IntegrityError" in str(err)
            if not raced or attempt == len(inputs):
                raise
    return datasets
