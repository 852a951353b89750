"""The dataset scan, bad-file handling, the bad-fraction limit and the format-leakage warning."""

from __future__ import annotations

import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import get_method
from PIL import Image

from experiments.data.audit import (
    add_metadata_probe,
    BadDataError,
    DataLeakageWarning,
    check_bad_fraction,
    estimate_jpeg_quality,
    leakage_warnings,
    PreflightSettings,
    preflight,
    scan_dataset,
    short_side_bin,
    total_variation,
)
from experiments.data import images as images_module
from experiments.data.datamodule import DetectorDataModule
from experiments.data.images import UnreadableImage, decode_image, load_rgb
from experiments.data.layouts import Sample
from experiments.tasks.train import log_data_report
from features.equalizer import ExtremeEqualizer
from tests.data.bad_files import DECODABLE, LEFT_RGB, RIGHT_RGB, TOO_SMALL, UNREADABLE, write_bad_files, write_decodable
from tests.conftest import compose_config, make_genimage_tree

CROP = 32
N_BAD = len(UNREADABLE) + 1  # every unreadable kind plus one too-small image


def make_dm(root: Path, **kw) -> DetectorDataModule:
    args = dict(name="t", root=str(root), crop_size=CROP, resize_size=None, batch_size=8, num_workers=0,
                val_fraction=0.34)
    args.update(kw)
    return DetectorDataModule(**args)


@pytest.fixture
def bad_tree(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A GenImage tree whose gen_a/val/ai folder (part of the test split) also holds every bad-file kind."""
    root = make_genimage_tree(tmp_path / "genimage")
    return root, write_bad_files(root / "gen_a" / "val" / "ai", size=48, small=8)


def reencode(root: Path, cls: str, fmt: str, quality: int = 75, size: int | None = None) -> None:
    """Re-save every image of class folder ``cls`` as ``fmt`` (optionally resized), replacing the originals."""
    for path in sorted(root.glob(f"*/*/{cls}/*")):
        img = Image.open(path).convert("RGB")
        if size:
            img = img.resize((size, size), Image.BICUBIC)
        path.unlink()
        ext = {"JPEG": ".jpg", "PNG": ".png"}[fmt]
        img.save(path.with_suffix(ext), format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))


# -- decoding ------------------------------------------------------------------------------------------------
def close(pixel, rgb, tol: int = 6) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(rgb, int)) <= tol))


def test_unusual_images_decode_into_correct_rgb(tmp_path):
    paths = write_decodable(tmp_path, size=48)
    assert set(paths) == set(DECODABLE)
    images = {kind: np.asarray(load_rgb(p)) for kind, p in paths.items()}
    for kind, img in images.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, kind
    white = (255, 255, 255)
    expected_halves = {
        "cmyk_jpeg": (LEFT_RGB, RIGHT_RGB),
        "png16_rgb": (LEFT_RGB, RIGHT_RGB),
        "palette": (LEFT_RGB, RIGHT_RGB),
        "palette_transparent": (white, RIGHT_RGB),
        "rgba": (white, RIGHT_RGB),
    }
    for kind, (left, right) in expected_halves.items():
        img = images[kind]
        assert img.shape[:2] == (48, 72), kind
        assert close(img[24, 4], left) and close(img[24, -5], right), kind
    assert (images["grayscale"] == 100).all()
    # 16-bit grey: 0, 25700, 32768, 65535 -> 0, 100, 128, 255 (value / 257)
    assert images["png16_gray"][0, :4, 0].tolist() == [0, 100, 128, 255]
    assert decode_image(paths["png16_gray"]).mode.startswith("I;16")
    # EXIF orientation 6 (rotate 90 degrees clockwise): 72x48 stored, 48x72 shown, left half on top
    rotated = images["exif_rotated"]
    assert rotated.shape[:2] == (72, 48)
    assert close(rotated[5, 24], LEFT_RGB, 20) and close(rotated[-6, 24], RIGHT_RGB, 20)


def test_dark_16bit_image_is_not_mistaken_for_8bit(tmp_path):
    path = tmp_path / "dark16.png"
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(path)
    assert np.asarray(load_rgb(path)).max() == 1  # 200 / 257, not 200


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_kinds_raise_with_reason(tmp_path, kind):
    path = write_bad_files(tmp_path)[kind]
    with pytest.raises(UnreadableImage) as err:
        load_rgb(path)
    assert err.value.reason == UNREADABLE[kind]
    assert err.value.path == str(path)


def test_pixel_limit_is_kept_in_the_warning_range(tmp_path, monkeypatch):
    """Between MAX_IMAGE_PIXELS and twice it PIL only warns; the file must still be refused."""
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnreadableImage, match="1600 pixels") as err:
        load_rgb(path)
    assert err.value.reason == "decompression bomb"
    # warning filters are process-wide, so a decoding thread can run while another one has reset them:
    # the explicit size check must refuse the file even when the warning is ignored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.setattr(images_module.warnings, "simplefilter", lambda *args, **kwargs: None)
        with pytest.raises(UnreadableImage, match="MAX_IMAGE_PIXELS=1000") as err:
            load_rgb(path)
    assert err.value.reason == "decompression bomb"


@pytest.mark.parametrize("quality", [10, 35, 50, 75, 90, 100])
def test_jpeg_quality_estimate_inverts_ijg_scaling(tmp_path, quality):
    path = tmp_path / "q.jpg"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(path, quality=quality)
    assert estimate_jpeg_quality(decode_image(path).quantization) == quality


def test_jpeg_quality_is_none_without_tables(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(path)
    assert decode_image(path).quantization is None
    assert estimate_jpeg_quality(None) is None


def test_histogram_helpers():
    assert short_side_bin(31) == "0-31" and short_side_bin(64) == "64-95" and short_side_bin(5000) == ">=4096"
    assert total_variation(Counter(JPEG=10), Counter(PNG=3)) == 1.0
    assert total_variation(Counter(JPEG=2, PNG=2), Counter(JPEG=1, PNG=1)) == 0.0


# -- the scan ------------------------------------------------------------------------------------------------
def test_scan_counts_every_bad_kind(bad_tree):
    root, paths = bad_tree
    report = scan_dataset(make_dm(root), progress=False)
    assert report.min_size == CROP  # native-resolution crop: the loader drops smaller images
    assert Counter(r.reason for r in report.unreadable) == Counter(UNREADABLE.values())
    assert {r.path for r in report.unreadable} == {str(paths[k]) for k in UNREADABLE}
    assert [r.path for r in report.too_small] == [str(paths[TOO_SMALL])]
    assert report.n_images == 2 * 2 * 2 * 6 + len(paths)
    assert report.bad_fraction == pytest.approx(N_BAD / report.n_images)
    by_path = {r.path: r for r in report.records}
    for kind in DECODABLE:
        assert report.usable(by_path[str(paths[kind])]), kind
    assert by_path[str(paths["exif_rotated"])].format == "JPEG"
    assert (by_path[str(paths["exif_rotated"])].width, by_path[str(paths["exif_rotated"])].height) == (48, 72)
    assert by_path[str(paths["cmyk_jpeg"])].jpeg_quality == 95
    assert by_path[str(paths["not_an_image"])].format is None  # the extension says JPEG; the content does not

    data = json.loads(json.dumps(report.to_dict()))
    group = next(g for g in data["groups"] if (g["split"], g["generator"], g["class"]) == ("test", "gen_a", "synthetic"))
    assert (group["images"], group["unreadable"], group["too_small"]) == (6 + len(paths), len(UNREADABLE), 1)
    assert group["formats"] == {"JPEG": 2, "PNG": 6 + len(DECODABLE) - 2}
    assert group["jpeg_quality"] == {"95": 2}
    assert data["unreadable_reasons"] == dict(Counter(UNREADABLE.values()))
    table = report.format_table()
    for reason in set(UNREADABLE.values()):
        assert reason in table
    assert "Smaller than 32 px: 1" in table and "TOO MANY" in table


def test_resized_loader_has_no_size_limit(bad_tree):
    report = scan_dataset(make_dm(bad_tree[0], resize_size=48), progress=False)
    assert report.min_size == 0 and report.too_small == []


def test_loader_skips_and_counts_the_same_files(bad_tree):
    root, _ = bad_tree
    dm = make_dm(root)
    dm.setup()
    report = scan_dataset(dm, progress=False)
    skipped = used = 0
    for batch in dm.test_dataloader():
        skipped += int(batch["skipped"])
        used += 0 if batch.get("empty") else batch["image"].shape[0]
    test_records = [r for r in report.records if r.split == "test"]
    assert skipped == N_BAD == sum(not report.usable(r) for r in test_records)
    assert used == len(test_records) - N_BAD


def test_too_many_bad_files_stop_with_a_clear_message(bad_tree):
    report = scan_dataset(make_dm(bad_tree[0]), progress=False)
    with pytest.raises(BadDataError) as err:
        check_bad_fraction(report, max_bad_fraction=0.01)
    message = str(err.value)
    assert f"{N_BAD} of {report.n_images} images" in message
    assert "data.max_bad_fraction=0.01" in message and "data.max_bad_fraction=0.05" in message
    assert "truncated_jpeg.jpg: truncated" in message and "zero_bytes.jpg: empty file" in message
    assert "too_small.png: too small, 8x8 < 32 px" in message
    check_bad_fraction(report, max_bad_fraction=0.2)
    with pytest.raises(ValueError, match="data.max_bad_fraction must be in"):
        check_bad_fraction(report, max_bad_fraction=5)


def test_a_class_without_usable_images_stops_whatever_the_limit(bad_tree):
    root, _ = bad_tree
    for png in (root / "gen_a" / "val" / "ai").glob("ai_*.png"):
        png.unlink()
    for kind in DECODABLE:
        next((root / "gen_a" / "val" / "ai").glob(f"{kind}.*")).unlink()
    report = scan_dataset(make_dm(root), progress=False)
    with pytest.raises(BadDataError, match="the test split has no usable synthetic image of generator 'gen_a'"):
        check_bad_fraction(report, max_bad_fraction=1.0)

    good = Sample(str(root / "gen_b" / "val" / "nature" / "nature_000.png"), 0, "gen_b")
    only_real = scan_dataset({"test": [good]}, progress=False)
    with pytest.raises(BadDataError, match=r"the test split has no usable synthetic image \(no files\)"):
        check_bad_fraction(only_real, max_bad_fraction=1.0)


def test_duplicates_across_splits_are_found(tmp_path):
    root = make_genimage_tree(tmp_path / "genimage")
    original = root / "gen_a" / "train" / "nature" / "nature_000.png"
    copy = root / "gen_b" / "val" / "ai" / "copied_real.png"  # test split, and the wrong class
    shutil.copy(original, copy)
    shutil.copy(root / "gen_a" / "val" / "ai" / "ai_001.png", root / "gen_a" / "val" / "ai" / "again.png")
    report = scan_dataset(make_dm(root), progress=False)
    assert report.cross_split_duplicate_pairs == 1
    assert report.within_split_duplicates == 1
    cross = [g for g in report.duplicates if len(g.splits) > 1]
    assert len(cross) == 1 and cross[0].labels_differ
    assert {p for _, _, p in cross[0].files} == {str(original), str(copy)}
    assert report.summary_metrics()["data/duplicates_across_splits"] == 1
    assert "LABELS DIFFER" in report.format_table()


# -- leakage -------------------------------------------------------------------------------------------------
def test_leakage_warning_on_png_fakes_and_jpeg_reals_and_silence_once_equalised(tmp_path):
    root = make_genimage_tree(tmp_path / "genimage")
    assert leakage_warnings(scan_dataset(make_dm(root), progress=False)) == []

    reencode(root, "nature", "JPEG", quality=75)
    warns = leakage_warnings(scan_dataset(make_dm(root), progress=False))
    assert len(warns) == 1, warns
    assert "file format" in warns[0] and "real JPEG 100%" in warns[0] and "synthetic PNG 100%" in warns[0]
    assert "distance 1.00" in warns[0] and "equalizer=extreme" in warns[0]

    equalizer = ExtremeEqualizer(size=CROP, jpeg_quality=90)
    for path in sorted(root.rglob("*.*")):
        img = equalizer(Image.open(path))
        path.unlink()
        img.save(path.with_suffix(".jpg"), quality=90)
    assert leakage_warnings(scan_dataset(make_dm(root), progress=False)) == []


def test_leakage_warning_on_jpeg_quality_and_size(tmp_path):
    root = make_genimage_tree(tmp_path / "genimage")
    reencode(root, "nature", "JPEG", quality=70)
    reencode(root, "ai", "JPEG", quality=95, size=2 * CROP)
    warns = leakage_warnings(scan_dataset(make_dm(root), progress=False))
    assert len(warns) == 2, warns
    quality, size = warns
    assert "JPEG quality" in quality and "real 66-70 100%" in quality and "synthetic 91-95 100%" in quality
    assert "image size" in size and "real 32-63 100%" in size and "synthetic 64-95 100%" in size and "64x64" in size


def test_leakage_of_one_generator_is_named(tmp_path):
    root = make_genimage_tree(tmp_path / "genimage")
    for path in sorted((root / "gen_b").glob("*/nature/*.png")):
        Image.open(path).save(path.with_suffix(".jpg"), quality=80)
        path.unlink()
    warns = leakage_warnings(scan_dataset(make_dm(root), progress=False))
    assert len(warns) == 1 and warns[0].startswith("generator 'gen_b': real and synthetic images differ in file format")


# -- preflight and the task ----------------------------------------------------------------------------------
class RecordingLogger:
    """Stands in for Lightning's MLFlowLogger: records what ``experiments.tracking`` sends to it."""

    run_id = "run"

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.artifacts: list[tuple[str, str | None]] = []
        self.experiment = self

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        assert Path(path).is_file()
        self.artifacts.append((Path(path).name, artifact_path))


def test_preflight_logs_counts_then_stops_on_bad_data(bad_tree, tmp_path):
    root, _ = bad_tree
    cfg = compose_config(["data=genimage_tiny", f"data.root={root}"], tmp_path)
    logger = RecordingLogger()
    dm = make_dm(root)
    settings = PreflightSettings(max_bad_fraction=dm.max_bad_fraction, progress=False)
    with pytest.raises(BadDataError, match="data.max_bad_fraction=0.01"):
        preflight(dm, settings, on_report=lambda report: log_data_report(report, logger, tmp_path / "out", 0.01))
    assert logger.metrics["data/unreadable"] == len(UNREADABLE)
    assert logger.metrics["data/too_small"] == 1
    assert logger.metrics["data/duplicates_across_splits"] == 0
    assert sorted(logger.artifacts) == [("data_report.json", "data"), ("data_report.txt", "data")]

    cfg = compose_config(["data=genimage_tiny", f"data.root={root}", "++data.max_bad_fraction=0.2"], tmp_path)
    report = preflight(make_dm(root), PreflightSettings(max_bad_fraction=cfg.data.max_bad_fraction, progress=False))
    assert len(report.bad_files) == N_BAD


def test_preflight_warns_about_leakage(tmp_path):
    root = make_genimage_tree(tmp_path / "genimage")
    reencode(root, "ai", "JPEG")
    cfg = compose_config(["data=genimage_tiny", f"data.root={root}"], tmp_path)
    with pytest.warns(DataLeakageWarning, match="file format"):
        preflight(make_dm(root), PreflightSettings(max_bad_fraction=cfg.data.max_bad_fraction, progress=False))


def test_check_data_task_prints_and_writes_the_report(bad_tree, tmp_path, capsys):
    root, _ = bad_tree
    cfg = compose_config(
        ["task=check_data", "data=genimage_tiny", f"data.root={root}", f"data.crop_size={CROP}",
         "data.resize_size=null", "data.num_workers=0"],
        tmp_path,
    )
    with pytest.raises(BadDataError, match="cannot be used"):  # the verdict training would reach
        get_method(cfg.task.fn)(cfg)
    out = capsys.readouterr().out
    assert "Data report" in out and "Unreadable files: 5" in out and "TOO MANY" in out
    saved = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert saved["unreadable_count"] == len(UNREADABLE) and saved["too_small_count"] == 1
    assert (tmp_path / "out" / "data_report.txt").read_text().startswith("Data report")
    assert len([r for r in saved["unreadable"]]) + saved["too_small_count"] == N_BAD


def test_training_on_a_tree_with_bad_files_completes_and_logs_the_counts(bad_tree, tmp_path):
    """Every bad-file kind in the test split: training skips them, finishes, and MLflow holds the counts."""
    import mlflow

    from experiments.tasks.train import train
    from tests.conftest import TINY

    root, _ = bad_tree
    cfg = compose_config(TINY + [f"data.root={root}", "debug=cpu", "trainer.max_epochs=1", "diagnostics=false",
                                 "data.max_bad_fraction=0.5", "data.batch_size=64"], tmp_path)
    train(cfg)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["data/unreadable"] == len(UNREADABLE)
    assert run.data.metrics["data/too_small"] == 1
    assert "test/auc" in run.data.metrics


# -- the metadata probe --------------------------------------------------------------------------------------
def _blocky_images(tmp_path: Path, n: int = 20) -> dict[str, list[Sample]]:
    """Reals saved as JPEG (quality 95), fakes as PNG, with the same kind of content: only the format leaks."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        for label, ext in ((0, ".jpg"), (1, ".png")):
            pixels = np.kron(rng.random((12, 12, 3)), np.ones((6, 6, 1))) + 0.05 * rng.standard_normal((72, 72, 3))
            path = tmp_path / f"{label}_{i}{ext}"
            Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(
                path, **({"quality": 95} if ext == ".jpg" else {}))
            samples.append(Sample(str(path), label, "gen"))
    return {"train": samples}


def test_metadata_probe_reads_the_format_and_drops_after_the_equalizer(tmp_path):
    report = scan_dataset(_blocky_images(tmp_path), progress=False)
    add_metadata_probe(report, seed=0)
    assert report.probe["raw"] == pytest.approx(1.0)
    assert "equalized" not in report.probe and len(leakage_warnings(report)) == 1
    equalized = add_metadata_probe(scan_dataset(_blocky_images(tmp_path), progress=False),
                                   ExtremeEqualizer(size=64, jpeg_quality=90), seed=0)
    assert equalized.probe["raw"] == pytest.approx(1.0) and equalized.probe["equalized"] < 0.8
    assert {r.format for r in equalized.equalized} == {"JPEG"} and {r.width for r in equalized.equalized} == {64}
    assert equalized.summary_metrics()["data/probe_auroc_equalized"] == equalized.probe["equalized"]
    assert "Metadata probe AUROC" in equalized.format_table()


def test_leakage_warning_is_silent_after_equalizer_extreme(tmp_path, capsys):
    """A format-leaking tree (JPEG reals, PNG fakes): task=check_data with equalizer=extreme judges the equalized
    images, so no warning; the probe AUROC is 1.0 on the files. (Here the fakes' content differs from the reals',
    so bytes per pixel may still separate them after re-encoding: the probe reports that, the histograms do not.)"""
    root = make_genimage_tree(tmp_path / "genimage")
    reencode(root, "nature", "JPEG", quality=75)
    base = ["task=check_data", "data=genimage_tiny", f"data.root={root}", f"data.crop_size={CROP}",
            "data.resize_size=null", "data.num_workers=0"]
    raw = get_method(compose_config(base, tmp_path).task.fn)(compose_config(base, tmp_path))
    assert len(leakage_warnings(raw)) == 1 and raw.probe["raw"] == pytest.approx(1.0)
    cfg = compose_config(base + ["equalizer=extreme", f"data.equalizer.size={CROP}"], tmp_path)
    report = get_method(cfg.task.fn)(cfg)
    assert leakage_warnings(report) == [] and report.probe["raw"] == pytest.approx(1.0)
    assert 0.0 <= report.probe["equalized"] <= 1.0
    assert "Leakage warnings (after the equalizer" in capsys.readouterr().out
