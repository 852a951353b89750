"""Each split as an MLflow dataset input: name, digest of its file list, source, profile and context tag."""

from __future__ import annotations

import json
import os

import mlflow
import pytest

from experiments.data.layouts import Sample
from experiments.process import project_root
from experiments.training.logged_datasets import (
    CONTEXT_TAG,
    log_split_datasets,
    relative_source,
    split_digest,
    split_profile,
)


@pytest.fixture
def splits(tmp_path) -> dict[str, list[Sample]]:
    out = {}
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        out[split] = []
        for i in range(n):
            path = tmp_path / split / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * (i + 1))
            out[split].append(Sample(str(path), i % 2, "gen_a" if i < 2 else "gen_b", f"{split}/{i}.png"))
    return out


def test_the_profile_counts_classes_overall_and_per_generator(splits):
    assert split_profile(splits["train"]) == {
        "images": 4, "real": 2, "synthetic": 2,
        "generators": {"gen_a": {"real": 1, "synthetic": 1}, "gen_b": {"real": 1, "synthetic": 1}}}


def test_the_digest_follows_the_file_list(splits):
    before = split_digest(splits["train"])
    assert before == split_digest(list(splits["train"])) and len(before) == 24
    assert split_digest(splits["train"][:-1]) != before  # a file less
    path = splits["train"][0].path
    with open(path, "ab") as handle:  # a file rewritten
        handle.write(b"more")
    os.utime(path, ns=(1, 1))
    assert split_digest(splits["train"]) != before


def test_the_source_is_relative_inside_the_project_and_absolute_outside(tmp_path):
    assert relative_source(project_root() / "data" / "demo") == "data/demo"
    assert relative_source(tmp_path) == tmp_path.resolve().as_posix()


def test_every_split_is_a_dataset_input_of_the_run(splits, tmp_path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    logged = log_split_datasets(client, run_id, "tiny", tmp_path, splits)
    inputs = client.get_run(run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in d.tags if t.key == CONTEXT_TAG): d.dataset for d in inputs}
    assert set(by_context) == {"train", "val", "test"}
    for split, dataset in by_context.items():
        assert dataset.name == f"tiny-{split}" and dataset.digest == split_digest(splits[split])
        assert json.loads(dataset.source) == {"uri": tmp_path.resolve().as_posix()}
        assert json.loads(dataset.profile) == split_profile(splits[split])
        assert logged[split].digest == dataset.digest


class _RacingClient:
    """``log_inputs`` fails ``races`` times as a SQL store does when a parallel job added the dataset first."""

    def __init__(self, races: int, message: str = "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets"):
        self.races, self.message, self.calls = races, message, 0

    def log_inputs(self, run_id, datasets):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls <= self.races:
            raise MlflowException(self.message)


def test_a_dataset_added_by_a_parallel_job_is_logged_again_once_per_split_at_most(splits, tmp_path):
    from mlflow.exceptions import MlflowException

    client = _RacingClient(races=2)
    log_split_datasets(client, "run", "tiny", tmp_path, splits)
    assert client.calls == 3
    endless = _RacingClient(races=100)
    with pytest.raises(MlflowException, match="UNIQUE"):
        log_split_datasets(endless, "run", "tiny", tmp_path, splits)
    assert endless.calls == len(splits) + 1
    other = _RacingClient(races=1, message="permission denied")
    with pytest.raises(MlflowException, match="permission denied"):
        log_split_datasets(other, "run", "tiny", tmp_path, splits)
    assert other.calls == 1
