"""ExtremeEqualizer: geometry, colour, determinism, and the JPEG-vs-PNG leakage it removes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features.equalizer import ExtremeEqualizer


def random_content(rng: np.random.Generator, width: int = 64, height: int = 64) -> Image.Image:
    """Textured RGB image: uniform noise blurred with a random anisotropic Gaussian, stretched to [0, 255]."""
    x = rng.random((height, width, 3))
    x = gaussian_filter(x, sigma=(rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), 0))
    x = (x - x.min()) / (x.max() - x.min())
    return Image.fromarray((x * 255).round().astype(np.uint8))


def save_and_decode(image: Image.Image, fmt: str, **kwargs) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def blockiness_features(image: Image.Image) -> np.ndarray:
    """Format-only probe: mean |gradient| at each of the 8 column and 8 row phases, relative to the mean.

    JPEG quantises 8x8 DCT blocks independently, so decoded JPEGs have larger jumps at
    phase 7 (between blocks) than inside blocks; losslessly stored images do not.
    """
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    dx = np.abs(np.diff(gray, axis=1)).mean(axis=0)
    dy = np.abs(np.diff(gray, axis=0)).mean(axis=1)
    fx = np.array([dx[k::8].mean() for k in range(8)])
    fy = np.array([dy[k::8].mean() for k in range(8)])
    return np.concatenate([fx / fx.mean(), fy / fy.mean()])


def probe_auroc(images: list[Image.Image], labels: np.ndarray) -> float:
    features = np.stack([blockiness_features(image) for image in images])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=0)
    return float(cross_val_score(probe, features, labels, cv=cv, scoring="roc_auc").mean())


@pytest.fixture(scope="module")
def jpeg_real_png_fake() -> tuple[list[Image.Image], np.ndarray]:
    """Reals stored as JPEG (quality 75), fakes as PNG, content from one distribution."""
    rng = np.random.default_rng(0)
    n = 80
    reals = [save_and_decode(random_content(rng), "JPEG", quality=75) for _ in range(n)]
    fakes = [save_and_decode(random_content(rng), "PNG") for _ in range(n)]
    return reals + fakes, np.r_[np.zeros(n), np.ones(n)]


def test_format_probe_separates_before_equalisation(jpeg_real_png_fake):
    images, labels = jpeg_real_png_fake
    assert probe_auroc(images, labels) > 0.9


@pytest.mark.parametrize(
    "equalizer",
    [ExtremeEqualizer(jpeg_quality=75), ExtremeEqualizer(size=48, interpolation="bicubic", jpeg_quality=90)],
    ids=repr,
)
def test_format_probe_drops_to_chance_after_equalisation(jpeg_real_png_fake, equalizer):
    images, labels = jpeg_real_png_fake
    equalised = [equalizer(image) for image in images]
    assert abs(probe_auroc(equalised, labels) - 0.5) < 0.15


def test_reencoding_at_another_quality_without_resize_keeps_the_block_grid(jpeg_real_png_fake):
    """Documents the limit stated in the docstring: double compression on the same grid still leaks."""
    images, labels = jpeg_real_png_fake
    equalised = [ExtremeEqualizer(jpeg_quality=90)(image) for image in images]
    assert probe_auroc(equalised, labels) > 0.7


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "area", "lanczos", "nearest"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_output_size_and_mode(interpolation, mode):
    image = random_content(np.random.default_rng(1), width=80, height=50).convert(mode)
    out = ExtremeEqualizer(size=32, interpolation=interpolation, jpeg_quality=90)(image)
    assert out.mode == "RGB" and out.size == (32, 32)


def test_resize_short_side_then_centre_crop():
    image = random_content(np.random.default_rng(2), width=100, height=60)
    out = ExtremeEqualizer(size=30, interpolation="bilinear")(image)
    reference = image.resize((50, 30), resample=Image.Resampling.BILINEAR).crop((10, 0, 40, 30))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(reference))


def test_no_settings_is_identity_on_rgb():
    image = random_content(np.random.default_rng(3), width=40, height=30)
    out = ExtremeEqualizer()(image)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image))


def test_same_settings_give_same_output():
    image = random_content(np.random.default_rng(4), width=70, height=64)
    settings = dict(size=48, interpolation="lanczos", jpeg_quality=80, color="hist")
    first = np.asarray(ExtremeEqualizer(**settings)(image))
    second = np.asarray(ExtremeEqualizer(**settings)(image.copy()))
    np.testing.assert_array_equal(first, second)


def test_jpeg_reencoding_is_lossy_but_close():
    image = random_content(np.random.default_rng(5))
    out = np.asarray(ExtremeEqualizer(jpeg_quality=90)(image), dtype=np.float64)
    src = np.asarray(image, dtype=np.float64)
    assert not np.array_equal(out, src)
    psnr = 10 * np.log10(255**2 / np.mean((out - src) ** 2))
    assert psnr > 28


def test_grey_makes_channels_equal_luminance():
    image = random_content(np.random.default_rng(6))
    out = np.asarray(ExtremeEqualizer(color="grey")(image), dtype=np.float64)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    src = np.asarray(image, dtype=np.float64)
    luma = 0.299 * src[..., 0] + 0.587 * src[..., 1] + 0.114 * src[..., 2]
    assert np.abs(out[..., 0] - luma).max() <= 1.0


def test_hist_equalises_each_channel():
    rng = np.random.default_rng(7)
    low_contrast = (100 + 20 * rng.random((64, 64, 3))).astype(np.uint8)
    low_contrast[..., 2] //= 2  # a different range per channel
    out = np.asarray(ExtremeEqualizer(color="hist")(Image.fromarray(low_contrast)))
    for c in range(3):
        assert out[..., c].max() == 255 and out[..., c].min() < 30
        # An equalised channel has a roughly uniform cumulative histogram.
        assert abs(np.median(out[..., c]) - 127) < 20


def test_as_dict_repr_and_validation():
    equalizer = ExtremeEqualizer(size=64, interpolation="area", jpeg_quality=85, color="grey")
    assert equalizer.as_dict() == {"size": 64, "interpolation": "area", "jpeg_quality": 85, "color": "grey"}
    assert repr(equalizer) == "ExtremeEqualizer(size=64, interpolation='area', jpeg_quality=85, color='grey')"
    assert eval(repr(equalizer), {"ExtremeEqualizer": ExtremeEqualizer}) == equalizer
    assert equalizer.out_chans == 3
    with pytest.raises(ValueError, match="interpolation"):
        ExtremeEqualizer(interpolation="cubic")
    with pytest.raises(ValueError, match="jpeg_quality"):
        ExtremeEqualizer(jpeg_quality=0)
    with pytest.raises(ValueError, match="color"):
        ExtremeEqualizer(color="sepia")
    with pytest.raises(ValueError, match="size"):
        ExtremeEqualizer(size=0)
    with pytest.raises(TypeError, match="PIL image"):
        ExtremeEqualizer()(np.zeros((8, 8, 3), dtype=np.uint8))
