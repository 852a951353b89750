"""``python run.py --help`` offers real choices only: no partial (a name that starts with ``_``) is listed, and
every listed model and dataset composes into a detector config and a dataset config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[2]


def listed_choices(help_text: str) -> dict[str, list[str]]:
    """``group -> choices`` from the ``All groups and their choices:`` block of the help text."""
    lines = help_text.splitlines()
    start = lines.index("All groups and their choices:") + 1
    groups: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.strip():
            break
        group, _, choices = line.partition(": ")
        groups[group] = [c.strip() for c in choices.split(",") if c.strip()]
    return groups


@pytest.fixture(scope="module")
def choices() -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "run.py", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return listed_choices(done.stdout)


def test_help_lists_no_partial(choices):
    assert {"model", "data", "trainer", "experiment", "task"} <= set(choices)
    partials = {f"{group}={c}" for group, names in choices.items() for c in names if c.startswith("_")}
    partials |= {group for group in choices if any(part.startswith("_") for part in group.split("/"))}
    assert not partials, f"--help offers partials as choices: {sorted(partials)}"


def test_help_lists_every_model_and_dataset_config(choices):
    conf = REPO / "conf"
    assert choices["model"] == sorted(p.stem for p in (conf / "model").glob("*.yaml"))
    assert choices["data"] == sorted(p.stem for p in (conf / "data").glob("*.yaml"))


def test_every_listed_model_and_dataset_composes(choices, tmp_path):
    for model in choices["model"]:
        cfg = compose_config([f"model={model}", "data=demo"], tmp_path)
        assert cfg.model.name == model and cfg.model.kind._target_.startswith("experiments.training.kinds.")
    for data in choices["data"]:
        cfg = compose_config([f"data={data}", "data.root=/data"], tmp_path)
        assert cfg.data.name == data and cfg.data._target_ in ("experiments.data.datamodule.DetectorDataModule",
                                                               "experiments.data.packed.PackedDataModule")
