"""The rfft half-plane helpers and CPU slicing give exactly what the full FFT and one-call batches give."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from features import (
    FFTMagnitude,
    GaussianBottleneck,
    LaplacianResidual,
    LocalPatchFFT,
    RadialAngularHistogram,
    hermitian_full,
    rfft_power,
)
import features.batching as batching
from features.batching import fill_cpu_chunks, map_cpu_chunks
from features.spectrum import autocorrelation, log_magnitude_spectrum, power_and_autocorrelation, power_spectrum

SIZES = [(8, 8), (7, 9), (6, 5), (5, 6), (1, 4), (4, 1), (2, 2), (3, 3), (32, 48)]


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_hermitian_full_rebuilds_the_full_magnitude(size, shift):
    x = np.random.default_rng(0).random((2, 3, *size))
    full = np.abs(np.fft.fft2(x))
    if shift:
        full = np.fft.fftshift(full, axes=(-2, -1))
    half = torch.fft.rfft2(torch.from_numpy(x)).abs()
    np.testing.assert_allclose(hermitian_full(half, size[1], shift=shift).numpy(), full, rtol=1e-10, atol=1e-10)


def test_hermitian_full_writes_into_a_strided_view():
    x = torch.rand(2, 8, 6, dtype=torch.float64)
    target = torch.zeros(2, 6, 8, dtype=torch.float64).transpose(-2, -1)  # (2, 8, 6), not contiguous
    hermitian_full(rfft_power(x), 6, out=target)
    torch.testing.assert_close(target, power_spectrum(x))


@pytest.mark.parametrize("size", [(16, 16), (15, 17)], ids=str)
def test_spectra_match_numpy_for_even_and_odd_sizes(size):
    x = np.random.default_rng(1).random((3, *size))
    spec = np.fft.fft2(x)
    power = np.abs(spec) ** 2
    acf = np.real(np.fft.ifft2(power))
    acf = np.fft.fftshift(acf / acf[..., :1, :1], axes=(-2, -1))
    t = torch.from_numpy(x)
    np.testing.assert_allclose(power_spectrum(t).numpy(), np.fft.fftshift(power, axes=(-2, -1)), rtol=1e-9)
    np.testing.assert_allclose(autocorrelation(t).numpy(), acf, atol=1e-12)
    both = power_and_autocorrelation(t)
    torch.testing.assert_close(both[0], power_spectrum(t))
    torch.testing.assert_close(both[1], autocorrelation(t))
    expected_log = np.log1p(np.fft.fftshift(np.abs(spec), axes=(-2, -1)))
    np.testing.assert_allclose(log_magnitude_spectrum(t).numpy(), expected_log, rtol=1e-9)


def test_map_cpu_chunks_equals_one_call_for_tensors_and_tuples():
    x = torch.rand(10, 3, 4, 4)
    calls = []

    def fn(part):
        calls.append(part.shape[0])
        return part * 2, part.sum(dim=1)

    got = map_cpu_chunks(fn, x, max_elements=3 * 16 * 3)  # 3 images per slice
    assert calls == [3, 3, 3, 1]
    torch.testing.assert_close(got[0], x * 2)
    torch.testing.assert_close(got[1], x.sum(dim=1))
    torch.testing.assert_close(map_cpu_chunks(lambda p: p + 1, x, max_elements=48), x + 1)
    calls.clear()
    map_cpu_chunks(fn, x, max_elements=x.numel())
    assert calls == [10]  # small enough: one call


def test_fill_cpu_chunks_writes_each_slice_into_the_outputs():
    x = torch.rand(10, 3, 4, 4)
    doubled, sums = torch.full_like(x, float("nan")), torch.full((10, 4, 4), float("nan"))
    calls = []

    def fn(part, doubled_part, sums_part):
        calls.append(part.shape[0])
        torch.mul(part, 2, out=doubled_part)
        torch.sum(part, dim=1, out=sums_part)

    fill_cpu_chunks(fn, x, doubled, sums, max_elements=3 * 16 * 3)
    assert calls == [3, 3, 3, 1]
    torch.testing.assert_close(doubled, x * 2)
    torch.testing.assert_close(sums, x.sum(dim=1))
    calls.clear()
    fill_cpu_chunks(lambda part, out: calls.append(part.shape[0]), x.requires_grad_(), doubled, max_elements=48)
    assert calls == [10]  # autograd records through x: one call


@pytest.mark.parametrize("make", [
    lambda: LocalPatchFFT(8),
    lambda: FFTMagnitude(standardize=True),
    lambda: FFTMagnitude(grayscale=True),
    lambda: LaplacianResidual(),
    lambda: LaplacianResidual().spectra,
    lambda: RadialAngularHistogram(16, 8, use_residual=True, max_radius=math.sqrt(2.0)),
    lambda: GaussianBottleneck(1.0),
], ids=["local", "fftmag_std", "fftmag_gray", "residual", "residual_spectra", "radial", "blur"])
def test_features_give_the_same_batch_whether_sliced_or_not(make, monkeypatch):
    feature = make()
    x = torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def as_tuple(out):
        return out if isinstance(out, tuple) else (out,)

    whole = as_tuple(feature(x))
    one_by_one = [as_tuple(feature(x[i : i + 1])) for i in range(len(x))]
    monkeypatch.setattr(batching, "CPU_CHUNK_ELEMENTS", 2 * 3 * 32 * 32)  # 2 images per slice
    sliced = as_tuple(feature(x))
    for k, (a, b) in enumerate(zip(whole, sliced)):
        atol = 1e-6 * float(a.abs().max())  # FFT plans for other batch sizes round differently
        torch.testing.assert_close(b, a, rtol=1e-5, atol=atol)
        torch.testing.assert_close(torch.cat([o[k] for o in one_by_one]), a, rtol=1e-5, atol=atol)


def test_cpu_slicing_is_used_for_large_batches(monkeypatch):
    sizes = []
    blur = GaussianBottleneck(1.0)
    original = blur._blur_into
    monkeypatch.setattr(blur, "_blur_into", lambda part, out: sizes.append(part.shape[0]) or original(part, out))
    monkeypatch.setattr(batching, "CPU_CHUNK_ELEMENTS", 4 * 3 * 16 * 16)
    blur(torch.rand(10, 3, 16, 16))
    assert sizes == [4, 4, 2]


def test_sliced_entry_points_keep_their_input_errors():
    with pytest.raises(ValueError, match="in_chans=3 but got 1 channels"):
        LaplacianResidual().spectra(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 2x2"):
        LaplacianResidual().spectra(torch.rand(2, 3, 1, 8))
    with pytest.raises(ValueError, match=r"expects \(B, C, H, W\) images, got shape \(3, 8, 8\)"):
        RadialAngularHistogram(8, 8)(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"expects \(B, C, H, W\) images"):
        RadialAngularHistogram(8, 8).spectrum(torch.rand(3, 8, 8))


@pytest.mark.parametrize("make", [
    lambda: LocalPatchFFT(4),
    lambda: FFTMagnitude(standardize=True),
    lambda: LaplacianResidual(),
    lambda: (lambda x: LaplacianResidual().spectra(x)[2]),
    lambda: RadialAngularHistogram(4, 4, use_residual=True),
    lambda: GaussianBottleneck(0.8),
], ids=["local", "fftmag_std", "residual", "autocorrelation", "radial", "blur"])
def test_features_stay_differentiable_with_cpu_slicing_on(make, monkeypatch):
    monkeypatch.setattr(batching, "CPU_CHUNK_ELEMENTS", 3 * 8 * 8)  # one image per slice
    feature = make()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    assert torch.autograd.gradcheck(feature, (x,), eps=1e-6, atol=1e-5)
