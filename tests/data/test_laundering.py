"""Laundering chains (experiments/data/laundering.py) and their pixel steps: sizes, JPEG quality read back from
the quantisation tables, WebP files, crop areas, greyscale, the double re-share, and the ood=laundering grid."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from experiments.data import degradations
from experiments.data.audit.inspection import estimate_jpeg_quality
from experiments.data.degradations import centre_crop_area, encode_webp, greyscale, png, resize_long_side, webp
from experiments.data.laundering import CLEAN, Crop, Greyscale, Reshare, Screenshot, WebP, reshare_file
from experiments.data.perturbations import perturb_image, perturbation_grid

CONF = Path(__file__).resolve().parents[2] / "conf" / "ood" / "laundering.yaml"


def smooth(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``(1, 3, H, W)`` natural-looking content: coarse noise up-sampled bicubically, in [0.1, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 8), max(2, width // 8), generator=g)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0.1, 0.9)


def open_bytes(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(("long_side", "quality", "size"), [(720, 75, (720, 576)), (1080, 85, (1000, 800)),
                                                               (2048, 85, (1000, 800))])
def test_reshare_file_has_the_expected_size_and_jpeg_quality(long_side, quality, size):
    """A 1000x800 upload: the long side goes to 720 (800 -> 576 keeps 5:4), never up to 1080 or 2048; the file is
    a JPEG whose quantisation tables read back as the quality it was saved at."""
    image = open_bytes(reshare_file(smooth(800, 1000)[0], long_side, quality))
    assert image.format == "JPEG" and image.size == size
    assert estimate_jpeg_quality(image.quantization) == quality


def test_resize_long_side_never_upscales():
    x = smooth(40, 48)
    assert resize_long_side(x, 720) is x
    assert tuple(resize_long_side(smooth(40, 64), 32).shape[-2:]) == (20, 32)


def test_double_reshare_is_reshare_applied_twice():
    x = smooth(48, 64)
    once = Reshare().at("reshare", [40, 75])
    twice = Reshare(passes=2).at("double_reshare", [40, 75])
    assert twice.label == once.label == "l40_q75"
    out = twice(x)
    assert torch.equal(out, once(once(x)))
    assert tuple(out.shape[-2:]) == (30, 40) and not torch.equal(out, once(x))


def test_webp_writes_a_webp_file_and_its_round_trip_keeps_the_size():
    x = smooth(40, 56)
    image = open_bytes(encode_webp(x[0], 75))
    assert image.format == "WEBP" and image.size == (56, 40)
    errors = [float((webp(x, q) - x).abs().mean()) for q in (90, 50)]
    assert webp(x, 90).shape == x.shape and 0 < errors[0] < errors[1]  # lower quality, larger error


def test_webp_without_an_encoder_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(degradations.features, "check", lambda name: False)
    with pytest.raises(RuntimeError, match=r"WebP support.*PIL.features.check\('webp'\)"):
        WebP().at("webp", 90)


@pytest.mark.parametrize("area", [0.9, 0.75, 0.5])
def test_centre_crop_keeps_the_area_fraction(area):
    x = smooth(64, 64)
    out = Crop().at("crop", area)(x)
    assert out.shape[-2] * out.shape[-1] / 64**2 == pytest.approx(area, abs=0.02)
    h, w = out.shape[-2:]
    top, left = (64 - h) // 2, (64 - w) // 2
    assert torch.equal(out, x[..., top:top + h, left:left + w])
    assert Crop().label(area) == f"a{round(area * 100)}"


def test_crop_of_half_the_area_keeps_half_the_pixels():
    out = centre_crop_area(smooth(40, 60), 0.5)
    assert tuple(out.shape[-2:]) == (28, 42)  # round(40 * 0.7071), round(60 * 0.7071): 1176 of 2400 = 0.49


def test_greyscale_has_equal_channels_and_matches_pillow():
    x = smooth(32, 32)
    out = Greyscale().at("greyscale", "grey")(x)
    assert out.shape == x.shape
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    pil = np.asarray(Image.fromarray((x[0].permute(1, 2, 0) * 255).round().byte().numpy()).convert("L"))
    assert np.abs((out[0, 0] * 255).numpy() - pil).max() <= 1.0
    assert torch.allclose(greyscale(out), out, atol=1e-6)  # idempotent


def test_screenshot_resizes_saves_png_and_crops_a_border():
    x = smooth(60, 80)
    point = Screenshot().at("screenshot", [0.8, 0.9])
    out = point(x)
    assert point.label == "x0.8_a90"
    assert tuple(out.shape[-2:]) == (46, 61)  # 48x64 after x0.8, then each side x sqrt(0.9)
    assert torch.equal(out, (out * 255).round() / 255)  # PNG: on the 8-bit grid
    on_grid = (x * 255).round() / 255
    assert torch.equal(png(on_grid), on_grid)  # lossless


def test_clean_level_is_the_identity_of_every_chain():
    x = smooth(32, 32)
    for kind in (Reshare(), WebP(), Screenshot(), Crop(), Greyscale()):
        point = kind.at("chain", CLEAN)
        assert point.label == CLEAN and torch.equal(point(x), x)


@pytest.mark.parametrize(("kind", "level", "match"), [
    (Reshare(), [720], "pair"), (Reshare(), [720, 0], "quality"), (Reshare(), [0.5, 75], "long_side"),
    (Crop(), 1.5, r"\(0, 1\]"), (Screenshot(), [0.8, 0], "area"), (Greyscale(), "gray", "grey"),
    (WebP(), 101, "quality"),
])
def test_bad_levels_are_refused(kind, level, match):
    with pytest.raises(ValueError, match=match):
        kind.at("chain", level)


def test_laundering_grid_names_every_chain_and_level():
    kinds = {name: instantiate(node, _convert_="all") for name, node in OmegaConf.load(CONF).perturbations.items()}
    grid = perturbation_grid(kinds)
    by_name: dict[str, list[str]] = {}
    for p in grid:
        by_name.setdefault(p.name, []).append(p.label)
    assert by_name == {
        "reshare": ["clean", "l2048_q85", "l1080_q85", "l1080_q75", "l720_q75"],
        "double_reshare": ["clean", "l2048_q85", "l1080_q85", "l1080_q75", "l720_q75"],
        "webp": ["clean", "q90", "q75", "q50"],
        "screenshot": ["clean", "x0.8_a90"],
        "crop": ["clean", "a90", "a75", "a50"],
        "greyscale": ["clean", "grey"],
    }
    assert kinds["double_reshare"].passes == 2
    assert all(p.kind.ordinal for p in grid)
    assert {p.name for p in grid if p.kind.changes_size} == {"reshare", "double_reshare", "screenshot", "crop"}
    # on a decoded file (deployment order): a 1000x800 upload re-shared at 720 px
    file = Image.fromarray((smooth(800, 1000)[0].permute(1, 2, 0) * 255).round().byte().numpy())
    point = next(p for p in grid if p.key == "reshare/l720_q75")
    assert perturb_image(file, point, seed=0, sample_id=0).size == (720, 576)
