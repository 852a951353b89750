"""Untrusted names stay inside the run folder; a tracking outage mid-run does not stop training."""

from __future__ import annotations

import pytest

from experiments.safe_paths import inside, plain_name
from experiments.tracking import ResilientMLFlowLogger
from experiments.tasks.train import train
from tests.conftest import compose_config
from tests.conftest import TINY


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "/etc/passwd", ""])
def test_names_that_would_escape_are_refused(name):
    with pytest.raises(ValueError, match="model.name"):
        plain_name(name, "model.name")


def test_inside_refuses_escapes(tmp_path):
    assert inside(tmp_path, "a.pth") == (tmp_path / "a.pth").resolve()
    with pytest.raises(ValueError, match="outside"):
        inside(tmp_path, "../a.pth")


def test_training_refuses_a_model_name_with_a_path(genimage_tree, tmp_path):
    cfg = compose_config(TINY + [f"data.root={genimage_tree}", "debug=fdr", "model.name=../../escaped"], tmp_path)
    with pytest.raises(ValueError, match=r"model.name='../../escaped'"):
        train(cfg)
    assert not (tmp_path.parent / "escaped.pth").exists()


def test_tracking_outage_mid_run_is_buffered_and_recorded(tmp_path, monkeypatch):
    logger = ResilientMLFlowLogger(experiment_name="outage", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    logger.log_metrics({"val/auc": 0.5}, step=0)
    client = logger.experiment
    real = client.log_batch

    def down(*args, **kwargs):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(client, "log_batch", down)
    logger.log_metrics({"val/auc": 0.6}, step=1)  # must not raise
    logger.log_metrics({"val/auc": 0.7}, step=2)
    assert logger.failures == 2
    monkeypatch.setattr(client, "log_batch", real)
    logger.log_metrics({"val/auc": 0.8}, step=3)
    history = client.get_metric_history(logger.run_id, "val/auc")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.6), (2, 0.7), (3, 0.8)]
    assert client.get_run(logger.run_id).data.tags["tracking_failures"] == "2"
