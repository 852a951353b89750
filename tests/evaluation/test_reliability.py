"""Untrusted names stay inside the run folder (a tracking outage mid-run: tests/test_mlflow_server.py)."""

from __future__ import annotations

import pytest

from experiments.safe_paths import inside, plain_name
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
