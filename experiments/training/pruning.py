"""Pruning of an Optuna trial during training: the job's side of ``hparams_search=optuna``.

The suite's sweeper (``hydra_plugins.suite_optuna_sweeper``) gives each job its trial number; this callback
loads that trial from the study's persistent storage and, after every validation epoch, reports the monitored
metric to it (``trial.report``) and asks the study's pruner whether to stop (``trial.should_prune``), through
optuna-integration's :class:`~optuna_integration.PyTorchLightningPruningCallback` (Akiba et al., "Optuna: A
Next-generation Hyperparameter Optimization Framework", KDD 2019). A pruned trial ends its job with
:class:`optuna.TrialPruned`, which the sweeper records as ``PRUNED``; its MLflow run is tagged ``pruned``
with the epoch.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

#: what the search needs (the `search` extra); imported when a pruning callback is built, so that the suite
#: imports without it
SEARCH_EXTRA = "optuna>=3 and optuna-integration (pip install '.[search]')"


def _optuna():
    try:
        import optuna
        import optuna_integration  # noqa: F401
    except ImportError as err:
        raise ImportError(f"callbacks.optuna_pruning needs {SEARCH_EXTRA}") from err
    return optuna


def load_trial(storage: Any, study_name: str, trial_number: int, pruner: Any = None):
    """Trial ``trial_number`` of study ``study_name`` in ``storage`` (a URL or a storage), judged by ``pruner``."""
    optuna = _optuna()
    backend = optuna.storages.get_storage(storage)
    study = optuna.load_study(study_name=study_name, storage=backend, pruner=pruner)
    study_id = backend.get_study_id_from_name(study_name)
    return optuna.trial.Trial(study, backend.get_trial_id_from_study_id_trial_number(study_id, int(trial_number)))


class OptunaPruning(L.Callback):
    """Report ``monitor`` per epoch to trial ``trial_number`` of the study and stop the run when it is pruned.

    It holds optuna-integration's callback (which also handles DDP: rank 0 reports, every rank stops) and hands
    it the trial loaded from the storage.

    Args:
        storage: the study's storage, as the sweeper has it (``hydra.sweeper.storage``).
        study_name: the study's name (``hydra.sweeper.study_name``).
        trial_number: this job's trial (set by the sweeper).
        monitor: the validation metric reported, e.g. ``val/auc``.
        pruner: the study's pruner (``hydra.sweeper.pruner``); the study keeps no pruner of its own.
    """

    def __init__(self, storage: Any, study_name: str, trial_number: int, monitor: str, pruner: Any = None) -> None:
        if storage is None:
            raise ValueError("callbacks.optuna_pruning: the study is in memory (hydra.sweeper.storage=null), so a "
                             "job cannot report to it; set hydra.sweeper.storage (e.g. sqlite:///optuna.db) or "
                             "callbacks.optuna_pruning=null")
        if trial_number is None:
            raise ValueError("callbacks.optuna_pruning: no trial number (search_trial); it is set by the Optuna "
                             "sweeper: run with hparams_search=optuna")
        from optuna_integration import PyTorchLightningPruningCallback

        self.trial_number, self.monitor = int(trial_number), monitor
        self.reporter = PyTorchLightningPruningCallback(load_trial(storage, study_name, trial_number, pruner), monitor)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reporter.on_fit_start(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optuna = _optuna()
        try:
            self.reporter.on_validation_end(trainer, pl_module)
        except optuna.TrialPruned:
            log.info("trial %d pruned at epoch %d (%s)", self.trial_number, pl_module.current_epoch, self.monitor)
            tag_pruned(trainer, pl_module.current_epoch)
            raise

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Under DDP the reporter stops training instead of raising: raise here, once the ranks stopped."""
        self.reporter.check_pruned()


def tag_pruned(trainer: L.Trainer, epoch: int) -> None:
    """Tag the run's MLflow run (where the trainer logs to MLflow) ``pruned=<epoch>``."""
    for logger in trainer.loggers:
        run_id = getattr(logger, "run_id", None)
        if run_id is not None and hasattr(logger.experiment, "set_tag"):
            logger.experiment.set_tag(run_id, "pruned", str(epoch))
