"""The one selection metric: `monitor` / `monitor_mode` drive checkpointing, early stopping and the sweepers."""

from __future__ import annotations

from tests.conftest import compose_config


def test_callbacks_and_optimized_metric_read_monitor(tmp_path):
    from experiments.training.builders import build_callbacks

    cfg = compose_config([], tmp_path)
    assert cfg.monitor == "val/auc" and cfg.monitor_mode == "max" and cfg.optimized_metric == "val/auc"
    assert cfg.model.scheduler_monitor == "val/loss"  # the LR schedule keeps the smooth loss (see conf/_cnn.yaml)
    cfg = compose_config(["monitor=val/f1"], tmp_path)
    callbacks = {type(c).__name__: c for c in build_callbacks(cfg)}
    assert callbacks["ModelCheckpoint"].monitor == "val/f1" and callbacks["EarlyStopping"].monitor == "val/f1"
    assert cfg.optimized_metric == "val/f1"
    cfg = compose_config(["monitor=val/loss", "monitor_mode=min"], tmp_path)
    callbacks = {type(c).__name__: c for c in build_callbacks(cfg)}
    assert callbacks["ModelCheckpoint"].mode == "min" and callbacks["EarlyStopping"].mode == "min"


def test_optuna_direction_follows_monitor_mode(tmp_path):
    cfg = compose_config(["hparams_search=optuna", "monitor=val/eer", "monitor_mode=min"], tmp_path)
    assert cfg.hydra.sweeper.direction == "minimize" and cfg.optimized_metric == "val/eer"
    assert cfg.callbacks.optuna_pruning.monitor == "val/eer"  # the pruner judges the same metric
