"""OOD perturbations (noise, JPEG, blur, down-scaling), their config grid, and the CNNDetection augmentation."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from experiments.data.augment import CNNDetectionAugment
from experiments.data.transforms import Preprocess
from experiments.data.perturbations import (
    JPEG,
    Compose,
    GaussianBlur,
    GaussianNoise,
    Perturbation,
    apply,
    downscale,
    encode_jpeg,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    metric_prefix,
    perturbation_grid,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MLFLOW_SAFE = r"^[A-Za-z0-9_\-./ ]+$"


def smooth_images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Natural-looking content: low-resolution noise up-sampled bicubically, in [0.1, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, size // 8, size // 8, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (0.1 + 0.8 * (x - x.amin()) / (x.amax() - x.amin())).clamp(0, 1)


def white_noise_images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def energy_above(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Spectral energy (mean removed) at frequencies with |fx| or |fy| above ``cutoff`` cycles/pixel."""
    spectrum = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[-2]).abs().view(-1, 1)
    fx = torch.fft.fftfreq(x.shape[-1]).abs().view(1, -1)
    mask = (fy > cutoff) | (fx > cutoff)
    return spectrum[..., mask].sum()


# -- JPEG --------------------------------------------------------------------------------------------
def test_jpeg_q30_changes_bytes_and_pixels_q100_only_slightly():
    x = smooth_images()
    bytes_q30, bytes_q100 = encode_jpeg(x[0], 30), encode_jpeg(x[0], 100)
    assert bytes_q30[:2] == b"\xff\xd8" and bytes_q30 != bytes_q100
    assert len(bytes_q30) < len(bytes_q100)

    y30, y100 = jpeg(x, 30), jpeg(x, 100)
    assert y30.shape == x.shape and y30.dtype == x.dtype
    assert 0.0 <= float(y30.min()) and float(y30.max()) <= 1.0
    err30, err100 = (y30 - x).abs().mean(), (y100 - x).abs().mean()
    assert err30 > 4.0 / 255  # visibly degraded
    # q=100 still re-encodes (8-bit rounding, 4:2:0 chroma) but changes the pixels only slightly
    assert 0 < err100 < 2.0 / 255
    assert err100 < err30 / 3
    assert err100 < (jpeg(x, 70) - x).abs().mean() < err30
    # a real libjpeg round trip: the pixels are on the 8-bit grid
    torch.testing.assert_close(y30 * 255, (y30 * 255).round(), atol=1e-4, rtol=0)
    # decoding our bytes gives the same pixels as the batched function
    decoded = np.asarray(Image.open(io.BytesIO(bytes_q30)).convert("RGB"), dtype=np.float32) / 255
    torch.testing.assert_close(y30[0], torch.from_numpy(decoded).permute(2, 0, 1))


def test_jpeg_rejects_bad_quality():
    with pytest.raises(ValueError, match="quality"):
        jpeg(smooth_images(), 0)
    with pytest.raises(ValueError, match="quality"):
        JPEG().at("jpeg", 101)


# -- noise -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma255", [2, 5, 10, 20])
def test_noise_std_matches_sigma_on_mid_grey(sigma255):
    grey = torch.full((1, 3, 128, 128), 0.5)
    noisy = gaussian_noise(grey, sigma255, torch.Generator().manual_seed(1))
    residual = noisy - grey
    assert abs(float(residual.mean())) < 0.02 * sigma255 / 255
    assert float(residual.std()) == pytest.approx(sigma255 / 255, rel=0.05)


def test_noise_zero_is_identity_and_output_is_clamped():
    x = white_noise_images()
    assert torch.equal(gaussian_noise(x, 0), x)
    y = gaussian_noise(x, 50, torch.Generator().manual_seed(0))
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 and not torch.equal(x, y)


# -- blur --------------------------------------------------------------------------------------------
def test_blur_sigma0_is_identity_and_blur_lowers_high_frequencies():
    x = white_noise_images()
    assert torch.equal(gaussian_blur(x, 0), x)
    high = energy_above(x, 0.25)
    previous = high
    for sigma in (1, 2, 3):
        y = gaussian_blur(x, sigma)
        assert y.shape == x.shape
        energy = energy_above(y, 0.25)
        assert energy < 0.05 * high
        assert energy < previous
        previous = energy
    # a normalised positive kernel keeps the mean and the [0, 1] range
    y = gaussian_blur(x, 2)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert float(y.mean()) == pytest.approx(float(x.mean()), abs=1e-3)


# -- downscale ---------------------------------------------------------------------------------------
def test_downscale_identity_and_removes_upper_half_of_spectrum():
    x = white_noise_images()
    assert torch.equal(downscale(x, 1.0), x)
    y = downscale(x, 0.5)
    assert y.shape == x.shape
    # frequencies above the half-size Nyquist (0.25 cycles/pixel) lose almost all their energy ...
    assert energy_above(y, 0.25) < 0.02 * energy_above(x, 0.25)
    # ... while much of the low band survives
    low_x = energy_above(x, 0.0) - energy_above(x, 0.125)
    low_y = energy_above(y, 0.0) - energy_above(y, 0.125)
    assert low_y > 0.3 * low_x
    # 0.75 removes less than 0.5
    assert energy_above(downscale(x, 0.75), 0.25) > energy_above(y, 0.25)
    with pytest.raises(ValueError, match="scale"):
        downscale(x, 1.5)


# -- determinism -------------------------------------------------------------------------------------
def test_apply_is_deterministic_given_the_seed():
    x = smooth_images(batch=3)
    noise = GaussianNoise().at("noise", 10)
    a, b = apply(x, noise, seed=7), apply(x, noise, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, apply(x, noise, seed=8))
    # other strengths / names key different noise
    other = GaussianNoise().at("noise2", 10)
    assert not torch.allclose(a - x, apply(x, other, seed=7) - x)
    # the global RNG is neither used nor advanced
    torch.manual_seed(0)
    state = torch.get_rng_state()
    apply(x, noise, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    # rows of one batch get different noise
    c = apply(torch.full((2, 3, 32, 32), 0.5), noise, seed=7)
    assert not torch.equal(c[0], c[1])


def test_apply_is_independent_of_batch_composition():
    x = smooth_images(batch=4)
    noise = GaussianNoise().at("noise", 5)
    whole = apply(x, noise, seed=3, sample_ids=[10, 11, 12, 13])
    split = torch.cat(
        [apply(x[:1], noise, seed=3, sample_ids=[10]), apply(x[1:], noise, seed=3, sample_ids=[11, 12, 13])]
    )
    reversed_ = apply(x.flip(0), noise, seed=3, sample_ids=torch.tensor([13, 12, 11, 10])).flip(0)
    assert torch.equal(whole, split)
    assert torch.equal(whole, reversed_)
    # without sample ids the key is (batch index, row): same batch index -> same noise, regardless of call order
    later = apply(x, noise, seed=3, batch_index=5)
    apply(x, noise, seed=3, batch_index=0)
    assert torch.equal(later, apply(x, noise, seed=3, batch_index=5))
    assert not torch.equal(later, apply(x, noise, seed=3, batch_index=4))
    with pytest.raises(ValueError, match="sample_ids"):
        apply(x, noise, seed=3, sample_ids=[1, 2])


def test_compose_jpeg_then_blur():
    x = smooth_images()
    combo = Compose([JPEG(), GaussianBlur()]).at("jpeg_blur", [50, 2])
    assert combo.label == "q50_s2" and combo.strength == (50, 2) and not combo.stochastic
    torch.testing.assert_close(apply(x, combo, seed=0), gaussian_blur(jpeg(x, 50), 2))
    with pytest.raises(ValueError, match="one value per step"):
        Compose([JPEG(), GaussianBlur()]).at("jpeg_blur", [50])


# -- config grid -------------------------------------------------------------------------------------
def grid_of(name: str) -> list[Perturbation]:
    """The grid of ``conf/ood/<name>.yaml``, each entry built by its ``_target_``."""
    cfg = OmegaConf.load(CONF_DIR / "ood" / f"{name}.yaml")
    return perturbation_grid({k: instantiate(v, _convert_="all") for k, v in cfg.perturbations.items()})


@pytest.mark.parametrize("name", ["default", "noise", "quick"])
def test_grid_builds_from_each_ood_config(name):
    grid = grid_of(name)
    assert grid and all(isinstance(p, Perturbation) for p in grid)
    prefixes = [metric_prefix(p) for p in grid]
    assert len(set(prefixes)) == len(prefixes)
    for prefix in prefixes:
        assert prefix.startswith("ood/") and prefix.count("/") == 2
        assert re.match(MLFLOW_SAFE, f"{prefix}/auc")
    x = smooth_images(batch=1, size=48)
    for p in grid:
        y = apply(x, p, seed=0)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def test_default_grid_is_the_literature_grid():
    grid = grid_of("default")
    prefixes = [metric_prefix(p) for p in grid]
    assert prefixes == [
        "ood/noise/s0", "ood/noise/s2", "ood/noise/s5", "ood/noise/s10", "ood/noise/s20",
        "ood/jpeg/q100", "ood/jpeg/q90", "ood/jpeg/q70", "ood/jpeg/q50", "ood/jpeg/q30",
        "ood/blur/s0", "ood/blur/s1", "ood/blur/s2", "ood/blur/s3", "ood/blur/s4",
        "ood/downscale/x1", "ood/downscale/x0.75", "ood/downscale/x0.5",
        "ood/jpeg_blur/q50_s2",
    ]  # fmt: skip
    noise_only = grid_of("noise")
    assert [p.strength for p in noise_only] == [0, 2, 5, 10, 20]
    assert all(p.stochastic for p in noise_only)


def test_grid_rejects_bad_configs():
    with pytest.raises(ValueError, match="perturbations"):
        perturbation_grid({})
    with pytest.raises(ValueError, match="unknown kind"):
        perturbation_grid({"x": {"kind": "rotate", "strengths": [1]}})
    with pytest.raises(ValueError, match="duplicate"):
        perturbation_grid({"jpeg": JPEG(strengths=[50, 50.0])})
    with pytest.raises(ValueError, match="name"):
        perturbation_grid({"bad/name": JPEG(strengths=[50])})
    with pytest.raises(ValueError, match="strengths"):
        perturbation_grid({"jpeg": JPEG()})
    with pytest.raises(ImportError):  # a kind is chosen by _target_: an unknown class fails to instantiate
        from experiments.errors import instantiate as instantiate_or_raise

        instantiate_or_raise({"_target_": "experiments.data.perturbations.Rotate", "strengths": [1]})


# -- CNNDetection augmentation -----------------------------------------------------------------------
def pil_image(size: int = 48, seed: int = 0) -> Image.Image:
    array = (smooth_images(batch=1, size=size, seed=seed)[0].permute(1, 2, 0).numpy() * 255).round()
    return Image.fromarray(array.astype(np.uint8))


def test_augment_p0_is_identity():
    image = pil_image()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    out = CNNDetectionAugment()(image)
    assert out is image
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"p_blur": 1.0, "sigma_range": (1.0, 3.0)},
        {"p_jpeg": 1.0, "quality_range": (30, 60)},
        {"p_blur": 1.0, "p_jpeg": 1.0},
    ],
)
def test_augment_p1_changes_the_image(kwargs):
    image = pil_image()
    out = CNNDetectionAugment(**kwargs)(image, torch.Generator().manual_seed(0))
    assert isinstance(out, Image.Image) and out.size == image.size and out.mode == "RGB"
    diff = np.abs(np.asarray(out, np.float32) - np.asarray(image, np.float32))
    assert diff.mean() > 0.5


def test_augment_is_reproducible_from_the_torch_seed_and_plugs_into_preprocess():
    augment = instantiate(OmegaConf.load(CONF_DIR / "augment" / "cnndetection.yaml"))
    assert isinstance(augment, CNNDetectionAugment)
    assert augment.p_blur == 0.5 and augment.sigma_range == (0.0, 3.0) and augment.quality_range == (30, 100)
    preprocess = Preprocess(crop_size=32, resize_size=None, augment=augment)
    images = [pil_image(seed=s) for s in range(6)]

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([preprocess(img) for img in images])

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    plain = torch.stack([Preprocess(crop_size=32, resize_size=None)(img) for img in images])
    assert not torch.equal(first, plain)


def test_augment_off_is_identity_and_bad_args_fail():
    augment = CNNDetectionAugment()  # both probabilities default to 0
    image = pil_image()
    assert augment(image) is image
    with pytest.raises(ValueError, match="p_blur"):
        CNNDetectionAugment(p_blur=1.5)
    with pytest.raises(ValueError, match="quality_range"):
        CNNDetectionAugment(quality_range=(0, 100))
    assert CNNDetectionAugment.blur(image, 0.0) is image


def test_a_perturbation_before_the_equalizer_differs_from_after():
    """Deployment order (JPEG q30 on the file, then the equalizer re-encodes at q90) is not the older order
    (equalizer, then JPEG q30 on the preprocessed tensor), and the OOD default is the deployment order."""
    from PIL import Image

    from experiments.data.perturbations import ORDERS, perturb_image, perturbation_order
    from features.equalizer import ExtremeEqualizer

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((80, 96, 3)) * 255).astype(np.uint8))
    jpeg30 = JPEG().at("jpeg", 30)
    equalizer = ExtremeEqualizer(size=64, jpeg_quality=90)
    before = np.asarray(equalizer(perturb_image(image, jpeg30, 0, 0)), dtype=np.float64)
    equalized = torch.from_numpy(np.asarray(equalizer(image)).copy()).permute(2, 0, 1)[None].float() / 255
    after = apply(equalized, jpeg30, 0, sample_ids=[0])[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(before - after).mean() > 2.0
    assert perturbation_order(None) == "before_preprocessing" == ORDERS[0]
    assert perturbation_order("after_preprocessing") == "after_preprocessing"
    with pytest.raises(ValueError, match="ood.order"):
        perturbation_order("sideways")


def test_perturb_image_is_seeded_per_image():
    from PIL import Image

    from experiments.data.perturbations import perturb_image

    image = Image.fromarray(np.full((40, 40, 3), 128, np.uint8))
    noise = GaussianNoise().at("noise", 10)
    one, again, other = (np.asarray(perturb_image(image, noise, 7, i)) for i in (3, 3, 4))
    assert np.array_equal(one, again) and not np.array_equal(one, other)
    assert one.shape == (40, 40, 3) and one.dtype == np.uint8
