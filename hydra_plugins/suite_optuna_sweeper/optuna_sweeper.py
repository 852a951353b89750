"""A Hydra sweeper over an Optuna study kept in persistent storage, with trials pruned during training.

Optuna's ask-and-tell interface (Akiba et al., "Optuna: A Next-generation Hyperparameter Optimization
Framework", KDD 2019; https://optuna.readthedocs.io/en/stable/tutorial/20_recipes/009_ask_and_tell.html):
the sweeper asks the study for a batch of trials (``n_jobs``), turns each into the overrides of one job,
launches the batch through Hydra's configured launcher (``hydra/launcher``: in this process, joblib or SLURM)
and tells the study each job's result. Each job gets its trial number as one more override (``trial_key``), so
that a pruning callback in the job can report its per-epoch metric to the same trial of the same study.

Because the study lives in ``storage`` (an RDB URL such as ``sqlite:///optuna.db`` or ``postgresql://...``, or
an instantiable :class:`optuna.storages.JournalStorage`), running the same sweep again resumes it: the study
is loaded by ``study_name`` and ``n_trials`` more trials are added; several sweeps (workers) started with the
same storage and study name share one study. A resumed study's sampler is reseeded (a seeded sampler would
otherwise draw the points of its first trials again); give workers that start together different sampler seeds.

A job that ends with :class:`optuna.TrialPruned` is told as ``PRUNED``; any other failure as ``FAIL``, after
which the sweep stops with that job's error. The search space is Hydra's sweep grammar, as the basic sweeper
reads it (``hydra.sweeper.params`` and the command line): ``choice(a, b)`` and ``range(lo, hi, step)`` become
categorical choices, ``interval(lo, hi)`` a uniform float range (Hydra reads its bounds as floats) and
``tag(log, interval(lo, hi))`` a log-uniform one; a plain value fixes a key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")


def _optuna():
    """Optuna, imported when a sweep needs it: Hydra imports every plugin at start, with or without Optuna."""
    try:
        import optuna
    except ImportError as err:
        raise ImportError("hparams_search=optuna needs optuna>=3 (pip install '.[search]')") from err
    if int(optuna.__version__.split(".")[0]) < 3:
        raise ImportError(f"hparams_search=optuna needs optuna>=3, found {optuna.__version__} "
                          "(pip install '.[search]')")
    return optuna


def distribution_of(override: Override) -> Any:
    """The Optuna distribution of one sweep override, or the value of a plain (fixed) one as an override string."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    if override.is_choice_sweep() or override.is_range_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_interval_sweep():
        value = override.value()
        assert isinstance(value, IntervalSweep)
        # Hydra parses interval bounds as floats, so an interval is always a float range (integers: range(...))
        return FloatDistribution(float(value.start), float(value.end), log="log" in value.tags)
    raise ValueError(f"hydra.sweeper.params: {override.input_line} is not a sweep this sweeper supports; "
                     "use choice(...), range(...), interval(lo, hi) or tag(log, interval(lo, hi))")


def search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The distributions and the fixed values of ``key=value`` overrides (a later override of a key wins)."""
    distributions: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        value = distribution_of(override)
        distributions.pop(key, None)
        fixed.pop(key, None)
        if not isinstance(value, str):
            distributions[key] = value
        else:
            fixed[key] = value
    return distributions, fixed


def was_pruned(ret: JobReturn) -> bool:
    """Whether the job ended with :class:`optuna.TrialPruned` (or an error raised from or while handling it)."""
    if ret.status != JobStatus.FAILED:
        return False
    optuna = _optuna()
    err, seen = ret._return_value, set()
    while isinstance(err, BaseException) and id(err) not in seen:
        if isinstance(err, optuna.TrialPruned):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def open_storage(storage: Any) -> Any:
    """``storage`` as :func:`optuna.create_study` takes it: a URL, an instantiated storage, or ``None``."""
    if storage is None or isinstance(storage, str):
        return storage
    if isinstance(storage, DictConfig) and "_target_" in storage:
        return instantiate(storage)
    return storage


class OptunaStudySweeper(Sweeper):
    """Sweep by asking a (persistent) Optuna study for trials and telling it the jobs' returned metric.

    Args:
        direction: ``maximize`` or ``minimize`` the value each job returns.
        study_name: the study's name in ``storage``; an existing study of that name is resumed.
        storage: where the study lives (see the module docstring); ``None`` keeps it in memory, without
            resuming and without pruning from jobs in other processes.
        n_trials: trials this sweep adds to the study.
        n_jobs: trials asked for and launched together (the launcher runs them side by side if it can).
        sampler: an Optuna sampler (instantiated from its ``_target_``).
        pruner: an Optuna pruner; the jobs' pruning callback loads the study with the same one.
        trial_key: the config key that carries each job's trial number (``key=<number>`` is added to its
            overrides).
        params: the search space, in Hydra's sweep grammar (the command line's sweeps join it).
    """

    def __init__(self, direction: str, study_name: str, storage: Any, n_trials: int, n_jobs: int,
                 sampler: Any = None, pruner: Any = None, trial_key: str = "search_trial",
                 params: DictConfig | None = None) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction: {direction!r}; use one of {', '.join(DIRECTIONS)}")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials ({n_trials}) and n_jobs ({n_jobs}) must be at least 1")
        _optuna()
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.sampler, self.pruner, self.trial_key = sampler, pruner, trial_key
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.job_idx = 0

    def study(self) -> Any:
        """The study: created in ``storage``, or loaded from it when it exists (a resumed search)."""
        return _optuna().create_study(study_name=self.study_name, storage=open_storage(self.storage),
                                   sampler=self.sampler, pruner=self.pruner, direction=self.direction,
                                   load_if_exists=True)

    def overrides_of(self, trial: Any, fixed: dict[str, str]) -> tuple[str, ...]:
        """The job's overrides: the fixed values, the trial's sampled ones and its trial number."""
        return (*(f"{k}={v}" for k, v in fixed.items()), *(f"{k}={v}" for k, v in trial.params.items()),
                f"{self.trial_key}={trial.number}")

    def tell(self, study: Any, trial: Any, ret: JobReturn) -> BaseException | None:
        """Tell the study how one job ended; return the job's error when it failed (not pruned)."""
        from optuna.trial import TrialState

        if was_pruned(ret):
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d: pruned", trial.number)
            return None
        if ret.status == JobStatus.COMPLETED:
            try:
                value = float(ret.return_value)
            except (TypeError, ValueError):
                study.tell(trial, state=TrialState.FAIL)
                return ValueError(f"trial {trial.number}: the job returned {ret.return_value!r}, not a number "
                                  "(does the task return the optimized metric?)")
            study.tell(trial, value)
            log.info("trial %d: %s", trial.number, value)
            return None
        study.tell(trial, state=TrialState.FAIL)
        return ret._return_value if isinstance(ret._return_value, BaseException) else RuntimeError(str(ret))

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        space = [f"{k}={v}" for k, v in (self.params or {}).items()]
        distributions, fixed = search_space([*space, *arguments])
        study = self.study()
        if study.trials:  # resumed: a seeded sampler would draw its first trials' points again
            study.sampler.reseed_rng()
        log.info("study %s (%s): %d trials so far, adding %d; sampler %s, pruner %s", study.study_name,
                 self.storage or "in memory", len(study.trials), self.n_trials, type(study.sampler).__name__,
                 type(study.pruner).__name__)
        to_go = self.n_trials
        while to_go > 0:
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, to_go))]
            overrides = [self.overrides_of(trial, fixed) for trial in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            errors = [err for trial, ret in zip(trials, returns) if (err := self.tell(study, trial, ret))]
            if errors:
                raise errors[0]
            to_go -= len(trials)
        self.save_results(study)

    def save_results(self, study: Any) -> None:
        """Write the best trial so far to ``optimization_results.yaml`` in the sweep folder."""
        from optuna.trial import TrialState

        assert self.config is not None
        finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
        counts = {state.name: sum(t.state == state for t in study.trials) for state in TrialState}
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                                   "trials": {k: v for k, v in counts.items() if v}}
        if finished:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("best trial %d: %s %s", best.number, best.value, best.params)
        folder = Path(self.config.hydra.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), folder / "optimization_results.yaml")
