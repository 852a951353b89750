"""The job's side of an Optuna search: per-epoch reports to the trial in the study's storage, and pruning."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna", minversion="3.0")
pytest.importorskip("optuna_integration")

import torch  # noqa: E402

from experiments.training.pruning import OptunaPruning, load_trial  # noqa: E402


def trainer_at(auc: float) -> SimpleNamespace:
    return SimpleNamespace(sanity_checking=False, callback_metrics={"val/auc": torch.tensor(auc)}, loggers=[])


@pytest.fixture
def study_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.ask(), study.ask()  # trials 0 and 1
    return url


def test_load_trial_finds_the_trial_by_number(study_url):
    trial = load_trial(study_url, "s", 1)
    assert trial.number == 1 and trial.study.study_name == "s"


def test_each_validation_epoch_is_reported_to_the_trial(study_url):
    callback = OptunaPruning(study_url, "s", 1, "val/auc", pruner=optuna.pruners.NopPruner())
    for epoch, auc in enumerate((0.6, 0.7)):
        callback.on_validation_end(trainer_at(auc), SimpleNamespace(current_epoch=epoch))
    trial = optuna.load_study(study_name="s", storage=study_url).trials[1]
    assert trial.intermediate_values == pytest.approx({0: 0.6, 1: 0.7})


def test_the_pruner_stops_the_run_with_trial_pruned(study_url):
    callback = OptunaPruning(study_url, "s", 0, "val/auc", pruner=optuna.pruners.ThresholdPruner(lower=0.9))
    callback.on_validation_end(trainer_at(0.95), SimpleNamespace(current_epoch=0))
    with pytest.raises(optuna.TrialPruned):
        callback.on_validation_end(trainer_at(0.5), SimpleNamespace(current_epoch=1))


def test_a_study_in_memory_or_no_trial_number_is_refused_with_what_to_do(study_url):
    with pytest.raises(ValueError, match="hydra.sweeper.storage"):
        OptunaPruning(None, "s", 0, "val/auc")
    with pytest.raises(ValueError, match="hparams_search=optuna"):
        OptunaPruning(study_url, "s", None, "val/auc")
