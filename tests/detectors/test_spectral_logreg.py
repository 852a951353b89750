"""The ``radial_angular_logreg`` detector: estimator contract, features and a separable toy set."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_checks

from detectors.spectral_logreg import SpectralHistogramFeatures
from experiments.errors import instantiate
from features.bottleneck import GaussianBottleneck
from features.radial_angular import RadialAngularHistogram
from tests.conftest import compose_config


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Blurred uniform noise stretched to [0, 1] plus faint white sensor-like noise."""
    generator = torch.Generator().manual_seed(seed)
    x = GaussianBottleneck(2.0)(torch.rand(n, 3, size, size, generator=generator))
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - lo) / (hi - lo)
    return (x + 0.02 * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def upsampling_toy_set(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reals: smooth images. Fakes: other smooth images, 2x average-pooled then nearest x2 up-sampled."""
    real = smooth_images(n, size, seed)
    fake = F.interpolate(F.avg_pool2d(smooth_images(n, size, seed + 1), 2), scale_factor=2, mode="nearest")
    return torch.cat([real, fake]).numpy(), np.r_[np.zeros(n), np.ones(n)]


def test_transform_shape_names_and_values():
    X = smooth_images(3, 32, seed=0)
    for use_residual, width in [(False, 16 + 8), (True, 16 + 8 + 16)]:
        features = SpectralHistogramFeatures(n_radial=16, n_angular=8, use_residual=use_residual, log_features=False)
        out = features.fit_transform(X.numpy())
        assert out.shape == (3, width) and out.dtype == np.float64
        assert len(features.get_feature_names_out()) == width
        np.testing.assert_allclose(out[:, :16].sum(1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(out[:, 16:24].sum(1), 1.0, rtol=1e-5)
        expected = RadialAngularHistogram(16, 8, max_radius=features.max_radius)(X).numpy()
        np.testing.assert_allclose(out[:, :24], expected, rtol=1e-5)
        if use_residual:
            residual = RadialAngularHistogram(16, 8, use_residual=True, max_radius=features.max_radius)(X).numpy()[:, :16]
            np.testing.assert_allclose(out[:, 24:], residual, rtol=1e-5, atol=1e-9)


def test_log_features_and_batching_and_tensor_input():
    X = smooth_images(5, 32, seed=1)
    raw = SpectralHistogramFeatures(n_radial=8, n_angular=8, log_features=False, batch_size=256).transform(X)
    logged = SpectralHistogramFeatures(n_radial=8, n_angular=8, batch_size=2).transform(X.numpy())
    np.testing.assert_allclose(logged, np.log10(raw + 1e-12), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 32, 32, 3), dtype=np.float32), "shape"),
        (np.zeros((2, 3, 32, 32), dtype=np.uint8), "float"),
        (np.full((2, 3, 32, 32), 255.0, dtype=np.float32), r"\[0, 1\]"),
        (np.zeros((0, 3, 32, 32), dtype=np.float32), "empty"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(bad, message):
    with pytest.raises(ValueError, match=message):
        SpectralHistogramFeatures().fit(bad)
    with pytest.raises(ValueError, match="batch_size"):
        SpectralHistogramFeatures(batch_size=0).transform(smooth_images(1, 16, seed=0))


def test_sklearn_estimator_contract():
    """Which scikit-learn checks run here, and why not ``parametrize_with_checks``.

    ``parametrize_with_checks`` / ``check_estimator`` feed estimators 2-D tabular
    arrays ``(n_samples, n_features)`` (random floats, negative values, one
    feature, sparse matrices, NaNs...). This transformer's input is a 4-D stack
    of RGB images in [0, 1], so most of those checks would only test that it
    rejects tabular data. We therefore run the data-free checks from
    ``sklearn.utils.estimator_checks`` that apply to any estimator (clonability,
    repr, default-constructible parameters, nothing set in ``__init__``,
    ``get_params`` invariance, ``set_params`` round trip, no errors raised in
    ``__init__``/``set_params``, mixin order, valid tags), and check the
    data-dependent rules by hand on images: ``fit`` returns self, the transform
    shape, clone/pickle give identical output, ``fit`` does not change params.
    ``n_features_in_`` is not set: it describes tabular columns, not images.
    """
    estimator = SpectralHistogramFeatures(n_radial=8, n_angular=4)
    name = type(estimator).__name__
    for check in [
        estimator_checks.check_estimator_cloneable,
        estimator_checks.check_estimator_repr,
        estimator_checks.check_parameters_default_constructible,
        estimator_checks.check_no_attributes_set_in_init,
        estimator_checks.check_get_params_invariance,
        estimator_checks.check_set_params,
        estimator_checks.check_do_not_raise_errors_in_init_or_set_params,
        estimator_checks.check_mixin_order,
        estimator_checks.check_valid_tag_types,
    ]:
        check(name, estimator)

    X = smooth_images(4, 32, seed=2).numpy()
    params = estimator.get_params()
    assert estimator.fit(X) is estimator
    assert estimator.get_params() == params

    cloned = clone(estimator)
    assert cloned is not estimator and cloned.get_params() == params
    cloned.set_params(n_radial=12, use_residual=False)
    assert cloned.get_params()["n_radial"] == 12 and estimator.get_params()["n_radial"] == 8
    assert cloned.transform(X).shape == (4, 12 + 4)

    out = estimator.transform(X)
    assert out.shape == (4, 8 + 4 + 8)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(estimator)).transform(X), out)
    assert not hasattr(estimator, "n_features_in_")


def test_pipeline_learns_upsampling_fingerprint_and_pickles(tmp_path):
    X_train, y_train = upsampling_toy_set(40, 32, seed=0)
    X_test, y_test = upsampling_toy_set(40, 32, seed=100)
    cfg = compose_config(["model=radial_angular_logreg", "model.estimator.features.n_radial=32",
                          "model.estimator.features.n_angular=32"], tmp_path)
    pipeline = instantiate(cfg.model.estimator)
    assert isinstance(pipeline, Pipeline)
    assert [name for name, _ in pipeline.steps] == ["features", "scale", "classifier"]
    assert pipeline.fit(X_train, y_train) is pipeline
    proba = pipeline.predict_proba(X_test)
    assert proba.shape == (80, 2)
    assert roc_auc_score(y_test, proba[:, 1]) >= 0.9
    assert pipeline.predict(X_test).shape == (80,)
    restored = pickle.loads(pickle.dumps(pipeline))
    np.testing.assert_allclose(restored.predict_proba(X_test), proba)
    # An unfitted clone with the same params learns the same model.
    refit = clone(pipeline).fit(X_train, y_train)
    np.testing.assert_allclose(refit.predict_proba(X_test), proba, rtol=1e-6)

