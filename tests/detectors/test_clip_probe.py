"""model=clip_probe (UnivFD, Ojha et al. 2023): a tiny random open_clip tower, the feature cache, the offline
error. No network: the tower is built from a custom config with random weights."""

from __future__ import annotations

import numpy as np
import pytest
from huggingface_hub import constants
from sklearn.metrics import roc_auc_score

from detectors.backbones import PretrainedWeightsUnavailable
from detectors.clip_probe import CLIPImageFeatures, ensure_weights
from experiments.errors import instantiate
from tests.conftest import compose_config, toy_set

TOWER = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}}
TOWER_OVERRIDE = ("model.estimator.features.model_cfg={embed_dim:32,vision_cfg:{image_size:32,layers:1,width:32,"
                  "head_width:16,patch_size:8}}")
TINY_DATA = ["data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.batch_size=8",
             "data.num_workers=0", "data.persistent_workers=false", "diagnostics=false"]


def tiny_features(**kwargs) -> CLIPImageFeatures:
    return CLIPImageFeatures(pretrained=None, model_cfg=TOWER, batch_size=16, device="cpu", **kwargs)


def test_features_have_the_embedding_size_and_are_deterministic():
    x, _ = toy_set(5, 40)  # resized to the tower's 32 px
    features = tiny_features()
    out = features.transform(x)
    assert out.shape == (5, 32) and np.isfinite(out).all()
    np.testing.assert_allclose(features.transform(x), out)
    assert not any(p.requires_grad for p in features._encoder().parameters())


def test_linear_probe_learns_a_separable_toy_set(tmp_path):
    cfg = compose_config(["model=clip_probe", TOWER_OVERRIDE, "model.estimator.features.device=cpu"], tmp_path)
    pipe = instantiate(cfg.model.estimator)
    x, y = toy_set(64, 32, seed=1)
    xt, yt = toy_set(64, 32, seed=2)
    pipe.fit(x, y.numpy())
    assert roc_auc_score(yt.numpy(), pipe.predict_proba(xt)[:, 1]) >= 0.9


def test_training_twice_encodes_each_image_once(tmp_path, genimage_tree, monkeypatch):
    from experiments.tasks.train import train

    calls = []
    original = CLIPImageFeatures.transform
    monkeypatch.setattr(CLIPImageFeatures, "transform", lambda self, X: calls.append(len(X)) or original(self, X))
    overrides = ["model=clip_probe", TOWER_OVERRIDE, "model.estimator.features.device=cpu", *TINY_DATA,
                 f"data.root={genimage_tree}"]
    train(compose_config(overrides, tmp_path / "first"))
    encoded = sum(calls)
    assert encoded > 0
    second = compose_config(overrides + ["model.estimator.classifier.C=0.1"], tmp_path / "second")
    second.paths.cache_dir = str(tmp_path / "first" / "data" / "cache")  # the sweep's shared cache
    first_dir = tmp_path / "first" / "data" / "cache" / "features"
    assert len(list(first_dir.glob("*.npz"))) == 3  # train, val, test
    calls.clear()
    train(second)
    assert sum(calls) == 0, "a second head on the same images must read the cached features"


def test_offline_without_weights_names_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        ensure_weights("ViT-L-14", "openai")
    for expected in ("ViT-L-14", "openai", "timm/vit_large_patch14_clip_224.openai",
                     "model.estimator.features.weights_path=", "model.estimator.features.pretrained=null"):
        assert expected in str(err.value)
    assert ensure_weights("ViT-L-14", None) is None


def test_saved_probe_holds_no_encoder_and_scores_the_same_after_loading(tmp_path):
    from experiments.training.sklearn_io import load_estimator, save_estimator

    cfg = compose_config(["model=clip_probe", TOWER_OVERRIDE, "model.estimator.features.device=cpu"], tmp_path)
    pipe = instantiate(cfg.model.estimator)
    x, y = toy_set(16, 32, seed=1)
    pipe.fit(x, y.numpy())
    path = save_estimator(pipe, tmp_path / "clip_probe.skops")
    assert path.stat().st_size < 100_000  # the head and the encoder's recipe, not its weights
    loaded = load_estimator(path)
    # the same random tower again needs the same seed: compare the linear heads, then score with the loaded one
    np.testing.assert_allclose(loaded[-1].coef_, pipe[-1].coef_)
    assert loaded[0].get_params() == {**pipe[0].get_params(), "model_cfg": TOWER}
    assert loaded.predict_proba(x).shape == (16, 2)
