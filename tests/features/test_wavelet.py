"""The Haar DWT sub-bands of SAFE (Li et al., KDD 2025): known answers on constant, striped and checkerboard
images, a NumPy filter-bank reference, energy preservation, autograd and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from features.wavelet import BANDS, HaarDWT


def haar_reference(image: np.ndarray) -> dict[str, np.ndarray]:
    """The one-level 2-D Haar DWT of a ``(H, W)`` array as an analysis filter bank: rows of ``(1, 1) / sqrt 2``
    (low) and ``(1, -1) / sqrt 2`` (high) on every pair, applied along the height (left) and the width (right)."""
    def analysis(n: int) -> tuple[np.ndarray, np.ndarray]:
        low, high = np.zeros((n // 2, n)), np.zeros((n // 2, n))
        for k in range(n // 2):
            low[k, 2 * k: 2 * k + 2] = (1.0, 1.0)
            high[k, 2 * k: 2 * k + 2] = (1.0, -1.0)
        return low / np.sqrt(2.0), high / np.sqrt(2.0)

    (lh, hh), (lw, hw) = analysis(image.shape[0]), analysis(image.shape[1])
    return {"LL": lh @ image @ lw.T, "LH": hh @ image @ lw.T, "HL": lh @ image @ hw.T, "HH": hh @ image @ hw.T}


def test_a_constant_image_has_zero_high_bands_and_twice_its_value_in_ll():
    x = torch.full((2, 3, 8, 12), 0.3)
    out = HaarDWT(bands=BANDS)(x)
    assert out.shape == (2, 12, 4, 6)
    torch.testing.assert_close(out[:, :3], torch.full((2, 3, 4, 6), 0.6), rtol=0, atol=1e-7)
    assert torch.equal(out[:, 3:], torch.zeros(2, 9, 4, 6))
    assert torch.equal(HaarDWT()(x), torch.zeros(2, 3, 4, 6))  # SAFE's default: the HH band alone


def test_stripes_of_period_two_light_one_band_with_a_known_value():
    """Columns alternating v, 0 (vertical stripes): only HL, the high-pass along the width, is non-zero, at
    (v - 0 + v - 0) / 2 = v; the transposed image lights LH alone; a +-a checkerboard lights HH at 2a."""
    v, a = 0.8, 0.1
    j = torch.arange(16)
    stripes = (v * (j % 2 == 0)).float().expand(1, 3, 16, 16)
    dwt = HaarDWT(bands=["LH", "HL", "HH"])
    out = dwt(stripes)
    assert torch.equal(out[:, 3:6], torch.full((1, 3, 8, 8), v))
    assert torch.equal(out[:, :3], torch.zeros(1, 3, 8, 8)) and torch.equal(out[:, 6:], torch.zeros(1, 3, 8, 8))
    rows = dwt(stripes.transpose(-1, -2).contiguous())
    assert torch.equal(rows[:, :3], torch.full((1, 3, 8, 8), v)) and not rows[:, 3:].any()
    i = torch.arange(16).view(-1, 1)
    board = (0.5 + a * (-1.0) ** (i + j)).expand(1, 3, 16, 16)
    torch.testing.assert_close(HaarDWT()(board), torch.full((1, 3, 8, 8), 2 * a), rtol=0, atol=1e-7)


def test_matches_the_numpy_filter_bank_band_major_and_preserves_energy():
    x = torch.rand(2, 3, 10, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = HaarDWT(bands=["HH", "LL", "HL", "LH"])(x)
    assert out.dtype == torch.float64 and out.shape == (2, 12, 5, 7)
    for b in range(2):
        for c in range(3):
            reference = haar_reference(x[b, c].numpy())
            for i, band in enumerate(["HH", "LL", "HL", "LH"]):
                np.testing.assert_allclose(out[b, i * 3 + c].numpy(), reference[band], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.pow(2).sum(), x.pow(2).sum())  # Haar is orthonormal: Parseval


def test_float32_under_autocast_and_differentiable():
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    dwt = HaarDWT(bands=["LH", "HL", "HH"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = dwt(x)
    assert mixed.dtype == torch.float32 and dwt(x.to(torch.bfloat16)).dtype == torch.float32
    torch.testing.assert_close(mixed, dwt(x), rtol=0, atol=0)
    assert dwt.out_chans == 9 and HaarDWT().out_chans == 3
    assert torch.autograd.gradcheck(HaarDWT(), (torch.rand(1, 3, 4, 4, dtype=torch.float64, requires_grad=True),))


def test_odd_sides_and_bad_bands_are_clear_errors():
    with pytest.raises(ValueError, match=r"33x32 has an odd side.*data\.crop_size"):
        HaarDWT()(torch.rand(1, 3, 33, 32))
    with pytest.raises(ValueError, match="in_chans"):
        HaarDWT()(torch.rand(1, 1, 32, 32))
    for bands in ([], ["HX"], ["HH", "HH"]):
        with pytest.raises(ValueError, match="bands"):
            HaarDWT(bands=bands)
    assert HaarDWT(bands="hh").bands == ("HH",)
