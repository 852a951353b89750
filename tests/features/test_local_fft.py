"""LocalPatchFFT against a per-patch numpy reference, its errors, and its CPU throughput."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from features.local_fft import LocalPatchFFT


def numpy_reference(x: np.ndarray, p: int) -> np.ndarray:
    out = np.empty_like(x)
    b, c, h, w = x.shape
    for i in range(b):
        for ch in range(c):
            for r in range(0, h, p):
                for q in range(0, w, p):
                    spec = np.fft.fftshift(np.fft.fft2(x[i, ch, r:r + p, q:q + p]))
                    out[i, ch, r:r + p, q:q + p] = np.log1p(np.abs(spec))
    return out


@pytest.mark.parametrize("patch", [8, 32])
def test_matches_per_patch_numpy(patch):
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    ours = LocalPatchFFT(patch_size=patch)(x).numpy()
    ref = numpy_reference(x.double().numpy(), patch)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_shape_and_out_chans():
    f = LocalPatchFFT(32)
    assert f(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert f.out_chans == 3


def test_upsampling_checkerboard_peaks_at_tile_nyquist():
    """Nearest x2 up-sampling of noise leaves a zero at Nyquist; a +-1 checkerboard puts all its energy there."""
    p = 16
    board = torch.tensor([[(-1.0) ** (i + j) for j in range(p * 2)] for i in range(p * 2)])
    x = (0.5 + 0.1 * board).expand(1, 3, -1, -1).contiguous()
    maps = LocalPatchFFT(p)(x)[0, 0]
    tile = maps[:p, :p]
    # after fftshift the Nyquist (p/2, p/2) frequency sits at index (0, 0) of the tile, DC at (p/2, p/2)
    assert torch.isclose(tile[0, 0], torch.log1p(torch.tensor(0.1 * p * p)), atol=1e-4)
    rest = tile.clone()
    rest[0, 0] = 0
    rest[p // 2, p // 2] = 0
    assert rest.abs().max() < 1e-3


@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (1, 3, 48, 64)])
def test_too_small_or_not_multiple_gives_clear_error(shape):
    with pytest.raises(ValueError, match="patch size 32"):
        LocalPatchFFT(32)(torch.rand(*shape))


def test_throughput_224px_batch64(capsys):
    """Benchmark (reported, not asserted): images/s at 224 px, batch 64, on this CPU."""
    f = LocalPatchFFT(32)
    x = torch.rand(64, 3, 224, 224)
    f(x)
    runs = 3
    start = time.perf_counter()
    for _ in range(runs):
        f(x)
    ips = runs * x.shape[0] / (time.perf_counter() - start)
    with capsys.disabled():
        print(f"\nLocalPatchFFT 224px batch64 CPU: {ips:.0f} images/s (torch threads={torch.get_num_threads()})")
    assert ips > 0


def test_local_fft_rejects_a_single_image_without_batch_dimension():
    with pytest.raises(ValueError, match=r"LocalPatchFFT expects \(B, C, H, W\) images, got shape \(3, 32, 32\)"):
        LocalPatchFFT(patch_size=16)(torch.rand(3, 32, 32))
