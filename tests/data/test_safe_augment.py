"""SAFE's training transformations (Li et al., KDD 2025): patch masking masks the expected share on the grid,
the crop is taken at native resolution before the rest, each step does what it says, and the preset plugs in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from experiments.data.augment import SAFEAugment, random_patch_mask
from experiments.data.transforms import Preprocess
from tests.conftest import CONF_DIR

OFF = {"p_flip": 0.0, "degrees": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "p_mask": 0.0}


def noise_image(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 256, (h, w, 3), dtype=np.uint8))  # no black pixel


@pytest.mark.parametrize("ratio, patch, cells", [(0.5, 8, 32), (0.75, 16, 12), (0.3, 16, 4), (0.0, 8, 0), (1.0, 8, 64)])
def test_patch_masking_masks_the_expected_share_in_whole_grid_cells(ratio, patch, cells):
    """64 x 64 with 8 px cells has 64 cells: ratio 0.5 masks int(4096 * 0.5 / 64) = 32 of them; with 16 px cells
    (16 of them) 0.3 masks int(4.8) = 4."""
    pixels = np.full((64, 64, 3), 200, np.uint8)
    out = random_patch_mask(pixels, ratio, patch, torch.Generator().manual_seed(0))
    masked = out[..., 0] == 0
    assert masked.sum() == cells * patch * patch and (out[masked] == 0).all() and (out[~masked] == 200).all()
    grid = masked.reshape(64 // patch, patch, 64 // patch, patch)
    assert (grid.all(axis=(1, 3)) == grid.any(axis=(1, 3))).all()  # every cell is masked whole or not at all
    assert (pixels == 200).all()  # the input is left alone


def test_patch_masking_is_seeded_and_keeps_a_remainder_strip():
    pixels = np.full((40, 36, 3), 9, np.uint8)  # 2 x 2 whole 16 px cells, strips of 8 and 4 px left over
    a = random_patch_mask(pixels, 0.9, 16, torch.Generator().manual_seed(3))
    b = random_patch_mask(pixels, 0.9, 16, torch.Generator().manual_seed(3))
    assert np.array_equal(a, b) and (a[..., 0] == 0).sum() == 4 * 256  # int(1440 * 0.9 / 256) = 5, capped at 4
    assert (a[32:] == 9).all() and (a[:, 32:] == 9).all()
    with pytest.raises(ValueError, match="ratio"):
        random_patch_mask(pixels, 1.5, 16)


def test_the_crop_comes_first_at_native_resolution_and_pads_small_images():
    image = noise_image(96, 80)
    pixels = np.asarray(image)
    out = SAFEAugment(crop_size=32, **OFF)(image, torch.Generator().manual_seed(0))
    crop = np.asarray(out)
    assert out.size == (32, 32)
    found = [(t, l) for t in range(80 - 31) for l in range(96 - 31) if np.array_equal(pixels[t:t + 32, l:l + 32], crop)]
    assert len(found) == 1  # an exact window of the image: no resize
    small = SAFEAugment(crop_size=32, **OFF)(noise_image(20, 40), torch.Generator().manual_seed(0))
    assert small.size == (32, 32) and (np.asarray(small)[:, :6] == 0).all()  # centred on black: 6 px each side


def test_each_step_changes_the_image_as_configured():
    image = noise_image()
    pixels = np.asarray(image).astype(int)
    flipped = SAFEAugment(**{**OFF, "p_flip": 1.0})(image)
    assert np.array_equal(np.asarray(flipped), pixels[:, ::-1])
    rotated = np.asarray(SAFEAugment(**{**OFF, "degrees": 180.0})(image, torch.Generator().manual_seed(1)))
    assert not np.array_equal(rotated, pixels) and (rotated.sum(-1) == 0).any()  # black corners
    jittered = np.asarray(SAFEAugment(**{**OFF, "brightness": 0.5})(image, torch.Generator().manual_seed(2)))
    ratio = jittered.mean() / pixels.mean()
    assert 0.5 <= ratio <= 1.5 and abs(ratio - 1) > 1e-3
    masked = np.asarray(SAFEAugment(**{**OFF, "p_mask": 1.0, "mask_ratio": (0.5, 0.5)})(image))
    assert (masked.sum(-1) == 0).mean() == 0.5
    assert np.array_equal(np.asarray(SAFEAugment(**OFF)(image)), pixels)
    with pytest.raises(ValueError, match="mask_ratio"):
        SAFEAugment(mask_ratio=(0.8, 0.2))
    with pytest.raises(ValueError, match="p_flip"):
        SAFEAugment(p_flip=2.0)


def test_the_preset_is_the_papers_and_is_reproducible_through_preprocess():
    preset = OmegaConf.load(Path(CONF_DIR) / "augment" / "safe.yaml")
    assert preset.resize_size is None and preset.random_crop is True
    augment = instantiate(preset.train_augment, crop_size=32)
    assert (augment.degrees, augment.p_flip, augment.p_mask, augment.mask_ratio, augment.mask_patch_size) == (
        180.0, 0.5, 0.5, (0.0, 0.75), 16)
    assert augment.jitter == {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5}
    preprocess = Preprocess(crop_size=32, resize_size=None, random_crop=True, augment=augment)
    images = [noise_image(48, 40, seed=s) for s in range(4)]

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([preprocess(img) for img in images])

    first = run(0)
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, run(0)) and not torch.equal(first, run(1))
