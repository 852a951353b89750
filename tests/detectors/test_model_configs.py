"""The contract of every model config, as timm's ``tests/test_models.py`` goes over its registry.

Every ``conf/model/*.yaml`` (each one a detector: the partials they share live at the root of ``conf/``) composes with ``data=demo`` and random
weights, builds its detector from the config alone (``model.net`` for a CNN detector, ``model.estimator`` for
a scikit-learn pipeline), scores a batch of two 64 px images to two floats, and has the parameter count its
row of the README's detector tables gives (``params``), written as the README writes counts.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from tests.conftest import CONF_DIR, toy_set

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
SIZE = 64
#: the README's word for a count that the data decides (a forest's tree nodes)
DATA_DEPENDENT = "data-dependent"
#: a tiny random open_clip tower: the default ViT-L/14 takes a minute to build and run on two cores
TINY_CLIP_TOWER = ("model.estimator.features.model_cfg={embed_dim:32,vision_cfg:{image_size:32,layers:1,width:32,"
                   "head_width:16,patch_size:8}}")


def compose_model(name: str, *overrides: str) -> DictConfig:
    """``config`` with ``data=demo model=<name>`` and random weights (no download)."""
    base = ["data=demo", f"model={name}", *overrides]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=base)
        if "backbone" in cfg.model:
            cfg = compose(config_name="config", overrides=[*base, "++model.backbone.pretrained=false"])
        if "features" in cfg.model.get("estimator", {}) and "pretrained" in cfg.model.estimator.features:
            cfg = compose(config_name="config", overrides=[*base, "model.estimator.features.pretrained=null",
                                                           "model.estimator.features.device=cpu"])
    return cfg


def written(count: int) -> str:
    """A count as the README writes it: ``21.4 M`` from a million on, digits below (``193``, ``1,622``)."""
    return f"{count / 1e6:.1f} M" if count >= 1_000_000 else f"{count:,}"


def readme_params(readme: str) -> dict[str, str]:
    """``model= -> params`` from every README table whose header has a `model=` and a ``params`` column."""
    found: dict[str, str] = {}
    columns: list[str] | None = None
    for line in readme.splitlines():
        if not line.startswith("|"):
            columns = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if columns is None:
            columns = cells if "`model=`" in cells and "params" in cells else []
        elif columns and re.fullmatch(r"`[a-z0-9_]+`", cells[0]) and len(cells) == len(columns):
            found[cells[0].strip("`")] = cells[columns.index("params")]
    return found


README_PARAMS = readme_params((ROOT / "README.md").read_text())


def test_every_model_config_is_covered():
    assert len(MODELS) >= 8
    assert sorted(README_PARAMS) == MODELS, "every model config has one row with its params in the README"


@pytest.mark.parametrize("name", MODELS)
def test_model_config_builds_scores_two_images_and_has_its_readme_params(name):
    cfg = compose_model(name, *([TINY_CLIP_TOWER] if name == "clip_probe" else []))
    assert cfg.model.name == name
    learned, count, scores = build_and_score(cfg)
    assert tuple(scores.shape) == (2,)
    assert (scores.dtype.is_floating_point if isinstance(scores, torch.Tensor)
            else np.issubdtype(scores.dtype, np.floating))
    assert bool(np.isfinite(np.asarray(scores)).all())
    if name == "clip_probe":  # the head has one weight per feature of the encoder's embedding, and an intercept
        assert count == int(cfg.model.estimator.features.model_cfg.embed_dim) + 1
        count = default_clip_embedding() + 1
    expected = README_PARAMS[name]
    if expected == DATA_DEPENDENT:
        assert count > 0 and hasattr(learned, "estimators_"), "only a forest's count depends on the data"
    else:
        assert written(count) == expected, f"{name}: {count} parameters, the README says {expected}"


@pytest.mark.slow
def test_clip_probe_default_encoder_has_its_readme_params():
    _, count, scores = build_and_score(compose_model("clip_probe"))
    assert tuple(scores.shape) == (2,)
    assert written(count) == README_PARAMS["clip_probe"]


def test_the_readme_parser_and_the_rounding_can_fail():
    assert written(21_350_465) == "21.4 M" and written(193) == "193" and written(48_065_153) == "48.1 M"
    assert written(999_999) == "999,999" and written(1_000_000) == "1.0 M"
    table = ("| `model=` | what | params |\n|---|---|---:|\n| `a` | x | 1.5 M |\n\n"
             "| `model=` | what |\n|---|---|\n| `b` | y |\n")
    assert readme_params(table) == {"a": "1.5 M"}


def build_and_score(cfg: DictConfig) -> tuple[object, int, torch.Tensor | np.ndarray]:
    """``(what learns, its parameter count as a run logs it (model/params), P(synthetic) of two images)``.

    A CNN detector is ``model.net`` (scored on two random images); a scikit-learn pipeline is ``model.estimator``,
    fitted on eight tiny toy images first, its count that of its fitted classifier.
    """
    from detectors.backbones import count_parameters
    from experiments.training.sklearn_io import count_estimator_parameters

    if "net" in cfg.model:
        torch.manual_seed(0)
        net = instantiate(cfg.model.net).eval()
        with torch.no_grad():
            logits = net(torch.rand(2, 3, SIZE, SIZE))
        return net, count_parameters(net), logits
    if "estimator" in cfg.model:
        pipeline = instantiate(cfg.model.estimator)
        x, y = toy_set(8, SIZE, seed=0)
        pipeline.fit(x, y.numpy())
        return pipeline[-1], count_estimator_parameters(pipeline[-1]), pipeline.predict_proba(x[:2])[:, 1]
    pytest.fail(f"conf/model/{cfg.model.name}.yaml builds neither model.net (a CNN) nor model.estimator (a pipeline)")


def default_clip_embedding() -> int:
    """The embedding width of clip_probe's default encoder, from its open_clip config (no weights built)."""
    import open_clip

    name = compose_model("clip_probe").model.estimator.features.model_name
    return int(open_clip.get_model_config(name)["embed_dim"])
