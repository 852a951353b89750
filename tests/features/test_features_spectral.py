"""Analytic tests of the spectral features: residual, spectra, histograms, blur, FFT maps."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from features.bottleneck import GaussianBottleneck
from features.fft_magnitude import FFTMagnitude
from features.local_fft import LocalPatchFFT
from features.radial_angular import RadialAngularHistogram
from features.residual import LAPLACIAN_KERNEL, LaplacianResidual
from features.spectrum import autocorrelation, power_spectrum, to_grayscale

SIZE = 64


def sinusoid(kx: int, ky: int, height: int = SIZE, width: int = SIZE, amplitude: float = 0.4) -> torch.Tensor:
    """``(1, 3, H, W)`` grey image ``0.5 + a sin(2 pi (kx j / W + ky i / H))``: kx, ky cycles per image."""
    i = torch.arange(height, dtype=torch.float64).view(-1, 1)
    j = torch.arange(width, dtype=torch.float64).view(1, -1)
    wave = 0.5 + amplitude * torch.sin(2 * math.pi * (kx * j / width + ky * i / height))
    return wave.expand(3, height, width).unsqueeze(0).float()


def expected_bins(kx: int, ky: int, n_radial: int, n_angular: int, size: int = SIZE) -> tuple[int, int]:
    fx, fy = 2 * kx / size, 2 * ky / size  # Nyquist-normalised frequencies
    radius = math.hypot(fx, fy)
    angle = math.atan2(fy, fx) % math.pi
    return int(radius * n_radial), int(angle / math.pi * n_angular)


def rng_images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def numpy_gray(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]


# --------------------------------------------------------------------------- spectrum / residual


def test_to_grayscale_uses_itu_601_weights():
    x = rng_images(2, 3, 8, 8)
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(to_grayscale(x)[:, 0], expected)
    assert to_grayscale(x[:, :1]).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_grayscale(rng_images(1, 2, 8, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_residual_power_spectrum_autocorrelation_match_numpy_opencv(dtype):
    x = rng_images(2, 3, 32, 40, seed=1).to(dtype)  # non-square catches swapped axes
    residual = LaplacianResidual(grayscale=True)
    res = residual(x)
    kernel = np.array(LAPLACIAN_KERNEL, dtype=np.float64)
    for b in range(2):
        gray = numpy_gray(x[b].double().numpy())
        ref_res = cv2.filter2D(gray, cv2.CV_64F, kernel, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(res[b, 0].double().numpy(), ref_res, atol=1e-4 * np.abs(ref_res).max())

        ref_power = np.fft.fftshift(np.abs(np.fft.fft2(ref_res)) ** 2)
        np.testing.assert_allclose(
            residual.power_spectrum(x)[b, 0].double().numpy(), ref_power, rtol=1e-4, atol=1e-4 * ref_power.max()
        )
        ref_acf = np.fft.fftshift(np.real(np.fft.ifft2(np.abs(np.fft.fft2(ref_res)) ** 2)))
        ref_acf /= ref_acf[16, 20]
        np.testing.assert_allclose(residual.autocorrelation(x)[b, 0].double().numpy(), ref_acf, atol=1e-4)


def test_per_channel_residual_matches_opencv_per_channel():
    x = rng_images(1, 3, 24, 24, seed=2)
    res = LaplacianResidual(grayscale=False)(x)
    assert res.shape == (1, 3, 24, 24) and LaplacianResidual(grayscale=False).out_chans == 3
    kernel = np.array(LAPLACIAN_KERNEL, dtype=np.float64)
    for c in range(3):
        ref = cv2.filter2D(x[0, c].double().numpy(), cv2.CV_64F, kernel, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(res[0, c].double().numpy(), ref, atol=1e-5)


def test_residual_of_flat_image_is_zero_and_shape():
    residual = LaplacianResidual()
    assert residual.out_chans == 1
    out = residual(torch.full((2, 3, 16, 16), 0.7))
    assert out.shape == (2, 1, 16, 16)
    assert out.abs().max() < 1e-5
    with pytest.raises(ValueError, match="in_chans"):
        residual(torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("period", [4, 8])
def test_autocorrelation_of_periodic_residual_peaks_at_period(period):
    tile = rng_images(1, 3, period, period, seed=period)
    image = tile.repeat(1, 1, SIZE // period, SIZE // period)
    centre = SIZE // 2

    # Exact: the generic autocorrelation of a periodic, zero-mean signal is 1 at the period lag.
    res = LaplacianResidual()(image)
    periodic = res[..., period : period + SIZE // 2, period : period + SIZE // 2]  # interior, still periodic
    periodic = periodic.repeat(1, 1, 2, 2)
    acf_exact = autocorrelation(periodic)[0, 0]
    assert acf_exact[centre, centre] == pytest.approx(1.0)
    assert acf_exact[centre, centre + period] == pytest.approx(1.0, abs=1e-5)
    assert acf_exact[centre + period, centre] == pytest.approx(1.0, abs=1e-5)

    # Through the module (reflect-padded borders break periodicity slightly).
    acf = LaplacianResidual().autocorrelation(image)[0, 0]
    assert acf[centre, centre] == pytest.approx(1.0)
    assert acf[centre, centre + period] > 0.85
    assert acf[centre + period, centre] > 0.85
    off_zero = acf.clone()
    off_zero[centre, centre] = -math.inf
    peak_y, peak_x = divmod(int(off_zero.argmax()), SIZE)
    assert (peak_y - centre) % period == 0 and (peak_x - centre) % period == 0
    # Lags that are not multiples of the period are clearly lower.
    assert acf[centre, centre + period // 2] < 0.5


def test_power_spectrum_of_sinusoid_peaks_at_its_frequency():
    power = power_spectrum(to_grayscale(sinusoid(5, 3)))[0, 0]
    power[SIZE // 2, SIZE // 2] = 0  # drop DC
    peaks = {divmod(int(i), SIZE) for i in power.flatten().topk(2).indices}
    c = SIZE // 2
    assert peaks == {(c + 3, c + 5), (c - 3, c - 5)}


# --------------------------------------------------------------------------- radial / angular histogram


@pytest.mark.parametrize("kx, ky", [(8, 4), (0, 10), (12, 0), (8, -4), (5, 9), (-3, 20)])
@pytest.mark.parametrize("use_residual", [False, True])
def test_sinusoid_peaks_in_right_radial_and_angular_bin(kx, ky, use_residual):
    hist = RadialAngularHistogram(n_radial=64, n_angular=64, use_residual=use_residual)
    radial, angular = hist.split(hist(sinusoid(kx, ky)))
    want_r, want_a = expected_bins(kx, ky, 64, 64)
    assert int(radial.argmax()) == want_r
    assert int(angular.argmax()) == want_a
    # Without the residual the wave is exactly periodic, so all power falls in one bin; the residual's
    # reflect-padded borders are not periodic and leak a little power elsewhere.
    floor = 0.85 if use_residual else 0.99
    assert radial[0, want_r] > floor and angular[0, want_a] > floor


def test_expected_bins_of_one_sinusoid_by_hand():
    # kx=8, ky=4 on 64 px: r = hypot(0.25, 0.125) = 0.2795 -> bin 17; angle = atan(0.5) = 0.4636 rad -> bin 9.
    assert expected_bins(8, 4, 64, 64) == (17, 9)
    # Orientation is folded to [0, pi): (8, -4) has angle pi - 0.4636 -> bin 54.
    assert expected_bins(8, -4, 64, 64) == (17, 54)


def test_corner_frequencies_beyond_nyquist_circle_are_excluded():
    # A strong wave in the spectrum's corner (r = 0.875 * sqrt 2 > 1) and a weak one inside the circle.
    image = sinusoid(28, 28, amplitude=0.4) + sinusoid(4, 2, amplitude=0.02) - 0.5
    hist = RadialAngularHistogram(n_radial=32, n_angular=16)
    radial, angular = hist.split(hist(image))
    want_r, want_a = expected_bins(4, 2, 32, 16)
    assert int(radial.argmax()) == want_r and radial[0, want_r] > 0.99
    assert int(angular.argmax()) == want_a


def test_histograms_sum_to_one_shapes_and_batching():
    x = rng_images(5, 3, 48, 40, seed=3)
    for kwargs in [{}, {"use_residual": True}, {"log_power": True, "n_radial": 16, "n_angular": 8}]:
        hist = RadialAngularHistogram(**kwargs)
        out = hist(x)
        assert out.shape == (5, hist.out_chans) == (5, hist.n_radial + hist.n_angular)
        radial, angular = hist.split(out)
        torch.testing.assert_close(radial.sum(1), torch.ones(5))
        torch.testing.assert_close(angular.sum(1), torch.ones(5))
        assert (out >= 0).all()
        single = torch.cat([hist(x[i : i + 1]) for i in range(5)])
        torch.testing.assert_close(out, single)


def test_histogram_bins_are_cached_per_size():
    hist = RadialAngularHistogram(n_radial=8, n_angular=8)
    hist(rng_images(1, 3, 16, 16))
    hist(rng_images(2, 3, 16, 16))
    hist(rng_images(1, 3, 20, 16))
    # full-grid and half-plane bins, once per size
    assert {key[-3:-1] for key in hist._bin_cache} == {(16, 16), (20, 16)} and len(hist._bin_cache) == 4


def test_histogram_is_differentiable():
    x = rng_images(2, 3, 16, 16).requires_grad_()
    RadialAngularHistogram(n_radial=8, n_angular=8, use_residual=True)(x)[:, 3].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------- local patch FFT


def test_local_fft_checkerboard_peaks_at_tile_nyquist():
    i = torch.arange(SIZE).view(-1, 1)
    j = torch.arange(SIZE).view(1, -1)
    smooth = 0.4 + 0.2 * (i + j).float() / (2 * SIZE)
    checker = ((-1.0) ** (i + j)).float()
    image = (smooth + 0.05 * checker).expand(1, 3, SIZE, SIZE)
    patch = 16
    maps = LocalPatchFFT(patch_size=patch)(image)
    tiles = maps[0, 0].reshape(SIZE // patch, patch, SIZE // patch, patch).permute(0, 2, 1, 3)
    tiles = tiles.reshape(-1, patch, patch).clone()
    tiles[:, patch // 2, patch // 2] = 0  # drop each tile's DC
    assert (tiles.flatten(1).argmax(1) == 0).all()  # Nyquist (fy, fx) = (-1/2, -1/2) sits at index (0, 0)
    expected = math.log1p(0.05 * patch * patch)
    assert tiles[:, 0, 0].sub(expected).abs().max() < 0.05


def test_local_fft_nearest_upsampled_noise_has_no_nyquist_energy():
    low = rng_images(2, 3, SIZE // 2, SIZE // 2, seed=4)
    image = F.interpolate(low, scale_factor=2, mode="nearest")
    maps = LocalPatchFFT(patch_size=16)(image)
    tiles = maps.reshape(2, 3, 4, 16, 4, 16)
    nyquist_row = tiles[:, :, :, 0, :, :]
    nyquist_col = tiles[:, :, :, :, :, 0]
    assert nyquist_row.abs().max() < 1e-4 and nyquist_col.abs().max() < 1e-4
    assert tiles[:, :, :, 1:, :, 1:].median() > 0.5


# --------------------------------------------------------------------------- Gaussian bottleneck


def test_gaussian_bottleneck_sigma_zero_is_identity():
    x = rng_images(2, 3, 32, 32)
    assert torch.equal(GaussianBottleneck(0.0)(x), x)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5])
def test_gaussian_bottleneck_matches_scipy_and_keeps_shape(sigma):
    x = rng_images(2, 3, 32, 36, seed=5)
    blur = GaussianBottleneck(sigma)
    out = blur(x)
    assert out.shape == x.shape and blur.out_chans == 3
    assert blur.kernel.numel() == 2 * math.ceil(3 * sigma) + 1
    truncate = math.ceil(3 * sigma) / sigma
    ref = gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=truncate)
    np.testing.assert_allclose(out.double().numpy(), ref, atol=1e-5)


def test_gaussian_bottleneck_lowers_high_frequency_energy():
    x = rng_images(2, 3, 32, 32, seed=6)
    hist = RadialAngularHistogram(n_radial=4, n_angular=1, exclude_dc=True)
    raw_power = power_spectrum(x)
    blurred_power = power_spectrum(GaussianBottleneck(1.0)(x))
    fy, fx = torch.meshgrid(torch.arange(32) - 16, torch.arange(32) - 16, indexing="ij")
    high = (fy.abs() >= 8) | (fx.abs() >= 8)
    ratio = blurred_power[..., high].sum() / raw_power[..., high].sum()
    assert ratio < 0.05
    # The power distribution shifts towards low radii.
    assert hist(GaussianBottleneck(1.0)(x))[:, 0].min() > hist(x)[:, 0].max()
    # Constant images stay constant (normalised kernel).
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(GaussianBottleneck(2.0)(flat), flat)


def test_gaussian_bottleneck_rejects_bad_settings():
    with pytest.raises(ValueError, match="sigma"):
        GaussianBottleneck(-1.0)
    with pytest.raises(ValueError, match="too small"):
        GaussianBottleneck(3.0)(torch.zeros(1, 3, 8, 8))


# --------------------------------------------------------------------------- FFT magnitude


def test_fft_magnitude_matches_numpy():
    x = rng_images(2, 3, 32, 24, seed=7)
    out = FFTMagnitude()(x)
    ref = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(x.double().numpy()), axes=(-2, -1))))
    assert out.shape == (2, 3, 32, 24) and FFTMagnitude().out_chans == 3
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-4, atol=1e-4)

    gray = FFTMagnitude(grayscale=True)
    out_gray = gray(x)
    ref_gray = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(numpy_gray(x[0].double().numpy())))))
    assert out_gray.shape == (2, 1, 32, 24) and gray.out_chans == 1
    np.testing.assert_allclose(out_gray[0, 0].double().numpy(), ref_gray, rtol=1e-4, atol=1e-4)


def test_fft_magnitude_standardize_and_centre():
    x = rng_images(3, 3, 32, 32, seed=8)
    out = FFTMagnitude(standardize=True)(x)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), torch.zeros(3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(-2, -1)), torch.ones(3, 3), atol=1e-4, rtol=0)
    raw = FFTMagnitude()(x)
    assert (raw.flatten(2).argmax(-1) == 16 * 32 + 16).all()  # DC at (H // 2, W // 2) for [0, 1] images


# --------------------------------------------------------------------------- device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_features_run_on_cuda_and_match_cpu():
    x = rng_images(2, 3, 32, 32, seed=9)
    modules = [
        LaplacianResidual(),
        RadialAngularHistogram(n_radial=16, n_angular=16, use_residual=True),
        GaussianBottleneck(1.0),
        FFTMagnitude(grayscale=True, standardize=True),
        LocalPatchFFT(patch_size=16),
    ]
    for module in modules:
        expected = module(x)
        got = module.to("cuda")(x.to("cuda")).cpu()
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
