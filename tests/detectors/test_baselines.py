"""SPECTRAFORGE's single-stream baselines and backbone swaps.

``fft_random_forest`` (flattened, pooled 2-D FFT -> random forest) and
``resnet50_fft`` (the frequency stream alone): features, determinism, learning a
separable toy set, training through the composed config; and other timm
backbones (ConvNeXt, Swin) in the CNN detectors through the config alone.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_checks

from detectors.fft_forest import FFTGridFeatures
from detectors.streams import FrequencyCNN
from experiments.training.sklearn_io import load_estimator, save_estimator
from experiments.tasks.train import train
from features.fft_magnitude import FFTMagnitude
from tests.conftest import compose_config, make_genimage_tree
from tests.conftest import fit_auroc, toy_set

# ---------------------------------------------------------------- fft_random_forest: features


def checkerboard(size: int = 32, amplitude: float = 0.25) -> torch.Tensor:
    i, j = np.indices((size, size))
    img = 0.5 + amplitude * (-1.0) ** (i + j)
    return torch.from_numpy(np.repeat(img[None, None], 3, axis=1)).float()


def test_features_shape_names_and_values():
    x, _ = toy_set(5, 32, seed=0)
    gray = FFTGridFeatures(grid=8).fit_transform(x.numpy())
    assert gray.shape == (5, 64) and gray.dtype == np.float64
    assert len(FFTGridFeatures(grid=8).get_feature_names_out()) == 64
    color = FFTGridFeatures(grid=4, grayscale=False, standardize=False)
    assert color.transform(x).shape == (5, 3 * 16) == (5, len(color.get_feature_names_out()))
    expected = F.adaptive_avg_pool2d(FFTMagnitude(grayscale=True, standardize=True)(x), 8).flatten(1)
    np.testing.assert_allclose(gray, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_checkerboard_lands_in_the_nyquist_corner_cell():
    """A period-2 checkerboard has all its energy at DC and at (Nyquist, Nyquist), index (0, 0) once centred."""
    grid = 8
    feats = FFTGridFeatures(grid=grid, standardize=False).transform(checkerboard(32)).reshape(grid, grid)
    dc = (grid // 2, grid // 2)
    others = np.delete(feats.ravel(), [0, dc[0] * grid + dc[1]])
    cell = (32 // grid) ** 2  # frequencies averaged into one cell
    assert feats[0, 0] == pytest.approx(np.log1p(0.25 * 32 * 32) / cell, rel=1e-5)
    assert np.allclose(others, 0, atol=1e-4)
    flat = FFTGridFeatures(grid=grid, standardize=False).transform(torch.full((1, 3, 32, 32), 0.5))
    assert abs(flat.reshape(grid, grid)[0, 0]) < 1e-4


def test_features_are_deterministic_and_batch_independent():
    x, _ = toy_set(6, 32, seed=3)
    a = FFTGridFeatures(grid=16, batch_size=256).transform(x)
    b = FFTGridFeatures(grid=16, batch_size=2).transform(x.numpy())
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 FFTs round differently per batch size
    np.testing.assert_array_equal(a, FFTGridFeatures(grid=16).transform(x))


def test_feature_transformer_follows_the_estimator_rules():
    estimator = FFTGridFeatures(grid=4)
    name = type(estimator).__name__
    for check in [
        estimator_checks.check_estimator_cloneable,
        estimator_checks.check_parameters_default_constructible,
        estimator_checks.check_no_attributes_set_in_init,
        estimator_checks.check_get_params_invariance,
        estimator_checks.check_set_params,
        estimator_checks.check_mixin_order,
    ]:
        check(name, estimator)
    x, _ = toy_set(2, 16, seed=0)
    assert estimator.fit(x) is estimator and clone(estimator).set_params(grid=2).transform(x).shape == (2, 4)
    for bad in ({"grid": 0}, {"batch_size": 0}, {"grid": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FFTGridFeatures(**bad).transform(x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FFTGridFeatures().transform(x * 255)


def test_forest_is_seeded_and_round_trips_through_skops(tmp_path):
    x, y = toy_set(32, 32, seed=1)
    xt, _ = toy_set(16, 32, seed=2)
    cfg = compose_config(["model=fft_random_forest", "model.estimator.features.grid=8",
                          "model.estimator.classifier.n_estimators=20", "seed=7"], tmp_path)
    pipe = instantiate(cfg.model.estimator)
    assert isinstance(pipe, Pipeline) and [n for n, _ in pipe.steps] == ["features", "classifier"]
    proba = pipe.fit(x, y.numpy()).predict_proba(xt)
    assert proba.shape == (16, 2)
    np.testing.assert_array_equal(clone(pipe).fit(x, y.numpy()).predict_proba(xt), proba)
    restored = load_estimator(save_estimator(pipe, tmp_path / "rf.skops"))
    np.testing.assert_array_equal(restored.predict_proba(xt), proba)


def test_forest_follows_the_run_seed(tmp_path):
    cfg = compose_config(["model=fft_random_forest", "seed=5"], tmp_path)
    assert instantiate(cfg.model.estimator).named_steps["classifier"].random_state == 5


# ---------------------------------------------------------------- the frequency-only baseline learns a separable toy set (the forest: tests/detectors/test_detectors.py)


def test_resnet50_fft_is_the_frequency_stream_alone_and_learns(tmp_path):
    cfg = compose_config(["model=resnet50_fft", "model.backbone.name=resnet10t", "model.net.head_hidden=16"],
                         tmp_path)
    torch.manual_seed(0)  # before the weights are drawn: the result must not depend on the tests run before
    net = instantiate(cfg.model.net)
    assert isinstance(net, FrequencyCNN) and set(net.cam_layers()) == {"frequency"}
    assert fit_auroc(net, steps=80) >= 0.9  # 40 steps reach 0.87-1.0 over init seeds 0-5; 80 reach 0.95-1.0


def test_resnet50_fft_defaults_to_resnet50(tmp_path):
    cfg = compose_config(["model=resnet50_fft"], tmp_path)
    assert cfg.model.backbone.name == "resnet50" and cfg.model.kind._target_ == "experiments.training.kinds.LightningDetector"


# ---------------------------------------------------------------- training through the composed config

TINY_DATA = ["data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.batch_size=8",
             "data.num_workers=0", "debug=fdr"]
TRAIN_OVERRIDES = {
    "fft_random_forest": ["model.estimator.classifier.n_estimators=10", "model.estimator.features.grid=8", "+diagnostics_strict=true"],
    "resnet50_fft": ["model.backbone.name=resnet10t", "model.net.head_hidden=16", "diagnostics=false"],
}
ARTIFACT = {"fft_random_forest": "fft_random_forest.skops", "resnet50_fft": "resnet50_fft.pth"}


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    return make_genimage_tree(tmp_path_factory.mktemp("genimage"), n=6, size=32)


@pytest.mark.parametrize("model", sorted(TRAIN_OVERRIDES))
def test_new_model_trains_through_composed_config(model, tiny_tree, tmp_path):
    cfg = compose_config([f"model={model}", f"data.root={tiny_tree}", *TINY_DATA, *TRAIN_OVERRIDES[model]], tmp_path)
    best = train(cfg)
    assert best is not None and 0.0 <= best <= 1.0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["model/name"] == model
    assert "test/auc" in runs[0].data.metrics
    assert ARTIFACT[model] in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


# ---------------------------------------------------------------- any timm backbone, through the config

# A Swin-T shrunk to one block per stage: timm builder kwargs pass through create_backbone (list values need
# `_convert_: all`, or timm gets a ListConfig). Swin has a fixed input size, hence img_size.
TINY_SWIN = ["model.backbone.name=swin_tiny_patch4_window7_224", "+model.backbone.img_size=32",
             "+model.backbone.window_size=4", "+model.backbone.embed_dim=16", "+model.backbone._convert_=all",
             "+model.backbone.depths=[1,1,1,1]", "+model.backbone.num_heads=[1,1,1,1]"]
BACKBONES = {"convnext": ["model.backbone.name=test_convnext"], "swin": TINY_SWIN}
STEM = {"convnext": "stem", "swin": "patch_embed"}
FIRST_STAGE = {"convnext": "stages.0.", "swin": "layers.0."}


def backbones_of(net: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, int]]:
    """Each backbone of a detector with the channel count of the feature in front of it."""
    if hasattr(net, "local_fft"):
        return {"backbone": (net.backbone, net.local_fft.out_chans)}
    return {"spatial": (net.spatial.backbone, net.spatial.bottleneck.out_chans),
            "frequency": (net.frequency.backbone, net.frequency.fft.out_chans)}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("model", ["resnet34_localfft", "spectraforge_dual"])
def test_other_timm_backbones_build_through_the_config(model, backbone, tmp_path):
    extra = ["model.net.patch_size=16"] if model == "resnet34_localfft" else ["model.net.fft_grayscale=true"]
    cfg = compose_config([f"model={model}", "model.backbone.freeze_stages=1", "model.net.head_hidden=8",
                          *extra, *BACKBONES[backbone]], tmp_path)
    net = instantiate(cfg.model.net)
    for name, (trunk, in_chans) in backbones_of(net).items():
        stem_conv = next(m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d))
        assert stem_conv.in_channels == in_chans, name
        frozen = {n for n, p in trunk.named_parameters() if not p.requires_grad}
        assert any(n.startswith(STEM[backbone]) for n in frozen) and any(FIRST_STAGE[backbone] in n for n in frozen)
        assert all(n.startswith(STEM[backbone]) or FIRST_STAGE[backbone] in n for n in frozen), name
    if model == "spectraforge_dual":
        assert backbones_of(net)["frequency"][1] == 1  # fft_grayscale: a one-channel stem
    net.train()
    logits = net(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2,)
    logits.sum().backward()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in net.parameters() if not p.requires_grad)


def test_swin_needs_img_size_below_224_and_resnet50_fft_takes_it_as_a_plain_override(tmp_path):
    """``resnet50_fft`` declares ``img_size: null`` (dropped by timm when unset), so no ``+`` is needed."""
    swin = [TINY_SWIN[0], "model.net.head_hidden=8", *TINY_SWIN[2:]]
    net = instantiate(compose_config(["model=resnet50_fft", *swin], tmp_path).model.net)
    with pytest.raises((AssertionError, RuntimeError)):
        net(torch.rand(1, 3, 32, 32))
    cfg = compose_config(["model=resnet50_fft", *swin, "model.backbone.img_size=32"], tmp_path)
    assert instantiate(cfg.model.net)(torch.rand(1, 3, 32, 32)).shape == (1,)
