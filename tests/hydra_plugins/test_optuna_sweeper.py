"""The suite's Optuna sweeper: Hydra's sweep grammar as Optuna distributions, and how a job's end is told."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna", minversion="3.0")

from hydra.core.utils import JobReturn, JobStatus  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hydra_plugins.suite_optuna_sweeper.optuna_sweeper import (  # noqa: E402
    OptunaStudySweeper,
    search_space,
    was_pruned,
)


def test_the_sweep_grammar_becomes_optuna_distributions():
    distributions, fixed = search_space([
        "a=choice(8, 16, 32)", "b=range(1, 4)", "c=interval(0.0, 0.6)", "d=tag(log, interval(1e-5, 1e-2))",
        "e=interval(2, 9)", "f=choice(true, false)", "g=choice(sqrt, log2)", "h=0.5",
    ])
    assert distributions["a"] == CategoricalDistribution([8, 16, 32])
    assert distributions["b"] == CategoricalDistribution([1, 2, 3])  # Hydra's range excludes its end
    assert distributions["c"] == FloatDistribution(0.0, 0.6)
    assert distributions["d"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert distributions["e"] == FloatDistribution(2.0, 9.0)  # Hydra reads interval bounds as floats
    assert distributions["f"] == CategoricalDistribution([True, False])
    assert distributions["g"] == CategoricalDistribution(["sqrt", "log2"])
    assert fixed == {"h": "0.5"}


def test_a_later_override_of_a_key_wins():
    distributions, fixed = search_space(["a=choice(1, 2)", "b=0.1", "a=3", "b=interval(0.0, 1.0)"])
    assert fixed == {"a": "3"} and set(distributions) == {"b"}


def job(status: JobStatus, value) -> JobReturn:
    ret = JobReturn()
    ret.status, ret.return_value = status, value
    return ret


def test_a_pruned_job_is_told_pruned_a_finished_one_its_value_a_failed_one_fail():
    sweeper = OptunaStudySweeper(direction="maximize", study_name="s", storage=None, n_trials=3, n_jobs=1)
    study = optuna.create_study(direction="maximize")
    wrapped = RuntimeError("training stopped")
    wrapped.__cause__ = optuna.TrialPruned("epoch 1")
    assert was_pruned(job(JobStatus.FAILED, wrapped)) and not was_pruned(job(JobStatus.COMPLETED, 0.5))
    pruned, done, failed, bad = (study.ask() for _ in range(4))
    assert sweeper.tell(study, pruned, job(JobStatus.FAILED, wrapped)) is None
    assert sweeper.tell(study, done, job(JobStatus.COMPLETED, 0.75)) is None
    error = ValueError("no data")
    assert sweeper.tell(study, failed, job(JobStatus.FAILED, error)) is error
    assert "not a number" in str(sweeper.tell(study, bad, job(JobStatus.COMPLETED, None)))
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL,
                                               TrialState.FAIL]
    assert study.best_value == 0.75


def test_the_job_overrides_carry_the_sampled_values_and_the_trial_number():
    sweeper = OptunaStudySweeper(direction="minimize", study_name="s", storage=None, n_trials=1, n_jobs=1)
    study = optuna.create_study()
    trial = study.ask({"a": CategoricalDistribution([8])})
    assert sweeper.overrides_of(trial, {"b": "0.5"}) == ("b=0.5", "a=8", "search_trial=0")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="direction"):
        OptunaStudySweeper(direction="max", study_name="s", storage=None, n_trials=1, n_jobs=1)
    with pytest.raises(ValueError, match="n_trials"):
        OptunaStudySweeper(direction="maximize", study_name="s", storage=None, n_trials=0, n_jobs=1)
