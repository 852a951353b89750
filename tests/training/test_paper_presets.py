"""The paper presets pin what their tables in the README say, and the README's data trees are the printer's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from experiments.data.layouts import CNNDetection, Derm, GenImageFlat, GenImageNested, Manifest
from tests.conftest import compose_config

README = Path(__file__).resolve().parents[2] / "README.md"
#: `key`: `value` in a table cell
PINNED = re.compile(r"`([a-z_][a-z0-9_.]*)`: `([^`]+)`")
#: settings every preset's table must pin (a table that loses a row fails here, not silently)
REQUIRED = {
    "synapse7": {"model.name", "model.backbone.name", "model.backbone.pretrained", "model.backbone.freeze_stages",
                 "data.resize_size", "data.crop_size", "data.batch_size", "model.optimizer.lr",
                 "model.optimizer.weight_decay", "model.scheduler.factor", "model.scheduler.patience",
                 "trainer.max_epochs", "monitor", "callbacks.early_stopping.monitor",
                 "callbacks.early_stopping.patience", "callbacks.model_checkpoint.monitor"},
    "spectraforge": {"model.name", "model.backbone.name", "model.backbone.pretrained", "data.equalizer._target_",
                     "data.name", "ood.perturbations.noise._target_"},
    "corvi2023": {"model.estimator.features.n_radial", "model.estimator.features.n_angular",
                  "model.estimator.classifier._target_", "data.crop_size", "data.resize_size", "data.max_per_class"},
}


def table_of(preset: str) -> dict[str, str]:
    """The `key`: `value` pairs of the README table under the heading that names ``experiment=<preset>``."""
    text = README.read_text()
    start = text.index(f"`experiment={preset}`\n")
    end = text.find("\n#", start + 1)
    return dict(PINNED.findall(text[start:end if end > 0 else None]))


@pytest.mark.parametrize("preset", sorted(REQUIRED))
def test_preset_pins_every_value_of_its_readme_table(preset, tmp_path):
    table = table_of(preset)
    assert REQUIRED[preset] <= set(table), f"README table of {preset} lacks {REQUIRED[preset] - set(table)}"
    cfg = compose_config([f"experiment={preset}", "data.root=/tmp/x"], tmp_path, keep_pretrained=True)
    for key, value in table.items():
        actual = OmegaConf.select(cfg, key, throw_on_missing=True)
        assert actual == yaml.safe_load(value), f"experiment={preset}: {key} is {actual!r}, the README says {value}"


def test_spectraforge_and_derm_equalize_by_default(tmp_path):
    derm = compose_config(["data=derm", "data.root=/tmp/x"], tmp_path)
    assert derm.data.equalizer._target_ == "features.equalizer.ExtremeEqualizer"
    off = compose_config(["data=derm", "data.root=/tmp/x", "data.equalizer=null"], tmp_path)
    assert off.data.equalizer is None
    assert compose_config(["data=genimage_tiny"], tmp_path).data.equalizer is None


def test_synapse7_selects_on_f1_and_uses_torchvision_weights(tmp_path):
    cfg = compose_config(["experiment=synapse7", "data=genimage_tiny", "data.root=/tmp/x"], tmp_path,
                         keep_pretrained=True)
    assert cfg.monitor == "val/f1" and cfg.callbacks.early_stopping.mode == "max"
    assert cfg.model.backbone.name == "resnet34.tv_in1k" and cfg.model.net.backbone.name == "resnet34.tv_in1k"


@pytest.mark.parametrize("data, layout", [("genimage_tiny", GenImageFlat()), ("genimage", GenImageNested()),
                                          ("cnndetection", CNNDetection()), ("manifest", Manifest()),
                                          ("derm", Derm())])
def test_your_own_data_shows_each_tree_and_its_command(data, layout):
    text = README.read_text()
    section = text[text.index("## Your own data"):]
    section = section[:section.index("\n## ", 3)]
    part = section[section.index(f"### `data={data}` (`layout={layout.name}`)"):]
    part = part[:part.find("\n### ", 3)] if "\n### " in part[3:] else part
    assert f"```\n{layout.expected_tree()}\n```" in part, f"README tree of {layout.name} differs from layout_trees"
    assert f"python run.py data={data} data.root=" in part
    assert text.count(layout.expected_tree()) == 1, f"the {layout.name} tree is in the README more than once"
