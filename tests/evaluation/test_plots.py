"""Every plot function writes a real, non-blank PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.evaluation import curves as plots
from experiments.evaluation import embeddings, spectra
from experiments.evaluation.metrics import metrics_by_group

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path, min_side: int = 150) -> None:
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 5.0, "image is (nearly) a single flat colour"


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(0.3 * labels + 0.7 * rng.random(300), 0, 1)
    groups = rng.integers(0, 3, 300)
    return probs, labels, groups


def test_confusion_matrix(tmp_path, scored):
    probs, labels, _ = scored
    path = tmp_path / "confusion.png"
    assert plots.plot_confusion_matrix(probs, labels, path, threshold=0.6) == path
    assert_valid_png(path)


def test_calibration(tmp_path, scored):
    probs, labels, _ = scored
    path = plots.plot_calibration(torch.tensor(probs), torch.tensor(labels), tmp_path / "sub" / "calib.png")
    assert_valid_png(path)


def test_roc_including_a_one_class_entry(tmp_path, scored):
    probs, labels, _ = scored
    curves = {"detector A": (probs, labels), "detector B": (np.clip(probs + np.random.default_rng(5).normal(0, 0.2, len(probs)), 0, 1), labels),
              "real only": (probs[labels == 0], labels[labels == 0])}
    assert_valid_png(plots.plot_roc(curves, tmp_path / "roc.png"))


def test_per_group_accuracy(tmp_path, scored):
    probs, labels, groups = scored
    by_group = metrics_by_group(probs, labels, groups, {0: "ADM", 1: "BigGAN", 2: "Midjourney"})
    by_group["empty"] = {"accuracy": float("nan")}
    assert_valid_png(plots.plot_per_group_accuracy(by_group, tmp_path / "per_group.png"))
    assert_valid_png(plots.plot_per_group_accuracy(by_group, tmp_path / "per_group_auc.png", metric="auc"))


def test_spectral_analysis(tmp_path):
    size = 32
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size // 2, xx - size // 2)
    real_power = 1e3 / (1.0 + radius ** 2)
    fake_power = real_power.copy()
    fake_power[::8, ::8] += 50.0  # periodic up-sampling peaks
    stats = {}
    for name, power in (("real", real_power), ("GAN", fake_power)):
        acf = np.real(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(power))))
        stats[name] = {"power_spectrum": power, "autocorrelation": acf / acf.max(),
                       "radial": np.log1p(power[size // 2, size // 2:]),
                       "angular": np.cos(np.linspace(0, np.pi, 18)) + (name == "GAN")}
    stats["torch"] = {key: torch.as_tensor(value) for key, value in stats["GAN"].items()}
    assert_valid_png(spectra.plot_spectral_analysis(stats, tmp_path / "spectral.png"))


def test_tsne_with_ten_points(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.array([0] * 5 + [1] * 5)
    features = rng.normal(size=(10, 16)) + 3.0 * labels[:, None]
    groups = np.array([0] * 5 + [1, 1, 2, 2, 2])
    path = embeddings.plot_tsne(features, labels, groups, tmp_path / "tsne.png", group_names={0: "real", 1: "ADM", 2: "VQDM"})
    assert_valid_png(path)


def test_gradcam_grid(tmp_path):
    rng = np.random.default_rng(2)
    images = torch.tensor(rng.random((2, 3, 32, 32)), dtype=torch.float32)
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 30.0)
    cams = {"spatial": np.stack([blob, blob.T]), "frequency": torch.tensor(np.stack([blob.T, blob]))}
    path = embeddings.plot_gradcam_grid(images, cams, tmp_path / "gradcam.png", titles=["real p=0.10", "fake p=0.93"])
    assert_valid_png(path)


def test_bar_comparison_skips_nan(tmp_path):
    table = {"LocalFFT-ResNet": {"auc": 0.93, "accuracy": 0.88, "eer": 0.12},
             "RadialAngular-LogReg": {"auc": 0.81, "accuracy": float("nan"), "eer": 0.25},
             "ResNet-50": {"auc": 0.9}}
    assert_valid_png(plots.plot_bar_comparison(table, ["auc", "accuracy", "eer"], tmp_path / "bars.png"))


def test_robustness_curves(tmp_path):
    curves = {"LocalFFT-ResNet": [(100, 0.95), (90, 0.9), (70, 0.8), (50, 0.7)],
              "ResNet-50": [(100, 0.97), (90, 0.85), (70, float("nan")), (50, 0.6)]}
    path = plots.plot_robustness_curves(curves, tmp_path / "robust.png", xlabel="JPEG quality")
    assert_valid_png(path)


def test_heatmap(tmp_path):
    names = ["ADM", "BigGAN", "SD v1.4"]
    matrix = np.array([[0.99, 0.62, 0.71], [0.58, 0.98, np.nan], [0.66, 0.7, 0.97]])
    path = plots.plot_heatmap(matrix, names, names, tmp_path / "cross.png", title="Cross-generator AUROC")
    assert_valid_png(path)
    with pytest.raises(ValueError):
        plots.plot_heatmap(matrix, names[:2], names, tmp_path / "bad.png", title="bad")


def test_plots_leave_pyplot_without_open_figures(tmp_path, scored):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    probs, labels, _ = scored
    plots.plot_confusion_matrix(probs, labels, tmp_path / "c.png")
    assert plt.get_fignums() == before
