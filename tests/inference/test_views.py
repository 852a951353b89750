"""eval.views / detect --views (experiments/inference/tiling.py) and their pooling (scoring.pool_views,
score_views): positions, crops, pooling on a stub detector with known per-view scores, auto, batches of views."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.data.layouts import Sample
from experiments.data.transforms import ImageTooSmall, Preprocess
from experiments.errors import UserError
from experiments.inference.scoring import pool_views, score_split, score_views
from experiments.inference.tiling import (
    AUTO_GRID,
    MAX_VIEWS,
    Views,
    ViewsError,
    collate_views,
    parse_pooling,
    parse_views,
    view_boxes,
    view_crops,
    views_loader,
)

CROP = 64


class _Brightness:
    """A stand-in for a LoadedDetector: P(synthetic) of a crop is its mean brightness in [0, 1]; counts calls."""

    native_views = True

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(images))
        return images.float().div(255).mean(dim=(1, 2, 3)).reshape(-1, 1)

    def calibrate(self, probs):
        return 1 - np.asarray(probs)


def _corner_image(width: int = 200, height: int = 150) -> Image.Image:
    """Black, with a bright 64 x 64 patch in the top-left corner (the centre crop does not reach it)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:CROP, :CROP] = 255
    return Image.fromarray(pixels)


def test_parse_views_and_pooling():
    assert parse_views(None) == parse_views("auto") == Views("auto")
    assert parse_views(" Grid:3 ") == Views("grid", 3) and str(parse_views("grid:3")) == "grid:3"
    assert parse_views("all") == Views("all") and parse_views("center") == Views("center")
    for bad in ("grid:0", "grid:x", "grid", "tiles"):
        with pytest.raises(ViewsError, match="eval.views"):
            parse_views(bad)
    assert parse_pooling(None) == "mean" and parse_pooling("MAX") == "max"
    with pytest.raises(ViewsError, match="eval.pooling"):
        parse_pooling("median")
    assert issubclass(ViewsError, UserError)


def test_grid_and_all_positions_on_a_200x150_image():
    assert view_boxes(200, 150, CROP, Views("grid", 3)) == ([0, 68, 136], [0, 43, 86])
    assert view_boxes(200, 150, CROP, Views("grid", 1)) == ([0], [0])
    # all: stride = the crop, plus the crops flush with the right and bottom edges
    assert view_boxes(200, 150, CROP, Views("all")) == ([0, 64, 128, 136], [0, 64, 86])
    assert view_boxes(128, 64, CROP, Views("all")) == ([0, 64], [0])  # a multiple of the crop: no overlap
    assert view_boxes(64, 64, CROP, Views("grid", 4)) == ([0], [0])  # coinciding crops are kept once
    with pytest.raises(ImageTooSmall):
        view_boxes(50, 150, CROP, Views("all"))


def test_all_is_capped_on_a_large_photo():
    xs, ys = view_boxes(4000, 3000, CROP, Views("all"))
    assert len(xs) * len(ys) <= MAX_VIEWS and len(xs) > len(ys) > 1
    assert xs[0] == ys[0] == 0 and xs[-1] == 4000 - CROP and ys[-1] == 3000 - CROP


def test_view_crops_cut_native_pixels_and_center_is_the_preprocessing():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    prep = Preprocess(CROP, resize_size=None)
    crops, covered = view_crops(img, prep, Views("grid", 3))
    assert crops.shape == (9, 3, CROP, CROP) and crops.dtype == torch.uint8
    assert covered == pytest.approx(3 * CROP / 200)  # gaps of 4 px between the three columns
    torch.testing.assert_close(crops[4], torch.from_numpy(pixels[43:107, 68:132]).permute(2, 0, 1))
    crops, covered = view_crops(img, prep, Views("all"))
    assert len(crops) == 12 and covered == 1.0
    center, fraction = view_crops(img, prep, Views("center"))
    torch.testing.assert_close(center, prep(img)[None])
    assert fraction == pytest.approx(CROP * CROP / (200 * 150))
    # a resizing detector's tiles are still cut at the native size (no resize)
    tiles, _ = view_crops(img, Preprocess(CROP, resize_size=96), Views("grid", 2))
    torch.testing.assert_close(tiles[-1], torch.from_numpy(pixels[86:150, 136:200]).permute(2, 0, 1))


def test_auto_tiles_only_a_native_views_detector_on_a_large_image():
    auto = parse_views("auto")
    spectral, spatial = auto.for_detector(True), auto.for_detector(False)
    assert spatial == Views("center") and spatial.center_only and not spectral.center_only
    assert spectral.for_image(200, 150, CROP) == Views("grid", AUTO_GRID)  # 150 > 2 x 64
    assert spectral.for_image(200, 128, CROP) == Views("center")  # not more than twice the crop
    assert spectral.for_image(64, 64, 64) == Views("center")  # the demo: 64 px images, 64 px crops
    assert spatial.for_image(4000, 3000, CROP) == Views("center")
    # explicit views apply to every detector; an image smaller than the crop keeps the centre crop
    assert parse_views("all").for_detector(False).for_image(200, 150, CROP) == Views("all", 0, False)
    assert parse_views("grid:2").for_detector(True).for_image(40, 40, CROP) == Views("center")
    assert "grid:4" in spectral.describe(CROP) and "128 px" in spectral.describe(CROP)


def test_pool_views_known_answers():
    scores, views = torch.tensor([0.1, 0.5, 0.3, 0.9]), torch.tensor([3, 1])
    torch.testing.assert_close(pool_views(scores, views, "mean"), torch.tensor([0.3, 0.9]))
    torch.testing.assert_close(pool_views(scores, views, "max"), torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError):
        pool_views(scores, torch.tensor([2, 1]), "mean")


def test_max_pooling_finds_the_bright_corner_that_the_centre_crop_misses():
    prep, img, det = Preprocess(CROP, resize_size=None), _corner_image(), _Brightness()
    center, _ = view_crops(img, prep, Views("center"))
    grid, _ = view_crops(img, prep, Views("grid", 3))
    crops = torch.cat([center, grid])
    counts = torch.tensor([1, len(grid)])
    by_max = score_views(det, crops, counts, "max")
    by_mean = score_views(det, crops, counts, "mean")
    assert det.calls == [10, 10]  # every view of both images in one forward pass
    assert by_max[0] == by_mean[0] == 0.0  # the centre crop sees none of the corner
    assert by_max[1] == pytest.approx(1.0)  # the grid's top-left view is the corner
    # the mean: the corner (1) and the view below it, 21 of whose 64 rows are bright, over 9 views
    assert by_mean[1] == pytest.approx((1 + 21 / 64) / 9, abs=1e-6)
    # chunked forwards give the same scores; calibration applies to the pooled score
    det.calls.clear()
    torch.testing.assert_close(score_views(det, crops, counts, "max", max_crops=4), by_max)
    assert det.calls == [4, 4, 2]
    torch.testing.assert_close(score_views(det, crops, counts, "max", calibrated=True), 1 - by_max.double())


class _Files:
    """The parts of a set-up datamodule that :func:`views_loader` reads."""

    def __init__(self, samples: list[Sample]) -> None:
        self.splits = {"test": samples}
        self.preprocess = Preprocess(CROP, resize_size=None)
        self.generator_names = ["gen"]
        self.batch_size, self.num_workers = 4, 0

    def _worker_context(self):
        return None


def test_views_loader_batches_every_view_and_score_split_pools_them(tmp_path: Path):
    samples = []
    for i, (w, h) in enumerate([(200, 150), (100, 100), (30, 30)]):  # tiled, centre crop, too small
        path = tmp_path / f"{i}.png"
        _corner_image(w, h).save(path)
        samples.append(Sample(str(path), i % 2, "gen"))
    loader = views_loader(_Files(samples), "test", parse_views("auto").for_detector(True))
    batch = next(iter(loader))
    assert batch["views"].tolist() == [AUTO_GRID * AUTO_GRID, 1] and int(batch["skipped"]) == 1
    assert batch["image"].shape == (17, 3, CROP, CROP) and batch["index"].tolist() == [0, 1]
    seen: Counter = Counter()
    predictions = score_split(_Brightness(), loader, ["gen"], desc=None, pooling="max", views_seen=seen)
    assert predictions.prob.tolist() == pytest.approx([1.0, 46 * 46 / (64 * 64)])
    assert seen == Counter({16: 1, 1: 1})
    assert collate_views([None])["empty"]


def test_views_loader_needs_image_files(tmp_path: Path):
    files = _Files([Sample(str(tmp_path / "in-a-pack.png"), 0, "gen")])
    with pytest.raises(ViewsError, match="eval.views=center"):
        views_loader(files, "test", Views("all"))
    files.test_dataloader = lambda: "its own batches"  # auto falls back to one centre crop per image
    assert views_loader(files, "test", Views("auto", native=True)) == "its own batches"
