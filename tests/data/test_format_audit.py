"""The format audit beyond the metadata probe's first features: EXIF and its Software tag, the JPEG
quantisation-table fingerprint, chroma subsampling and bit depth of each file; each feature family's share of
the probe's decision; the warning for a probe that survives the equalizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.data.audit import DataReport, scan_dataset
from experiments.data.audit.inspection import FileRecord, inspect_file
from experiments.data.audit.leakage import (
    PROBE_FAMILIES,
    PROBE_WARNING_AUROC,
    add_metadata_probe,
    metadata_probe_shares,
    probe_design,
    probe_warnings,
    software_category,
)
from experiments.data.audit.store import CheckStore, file_key
from experiments.data.layouts import Sample


def _pixels(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.random((size // 8, size // 8, 3)), np.ones((8, 8, 1)))
    return (np.clip(smooth + 0.05 * rng.standard_normal((size, size, 3)), 0, 1) * 255).astype(np.uint8)


def _record(path: Path, label: int = 0) -> FileRecord:
    return inspect_file(Sample(str(path), label, "gen"), "train")


def test_exif_presence_and_software_are_read(tmp_path):
    exif = Image.Exif()
    exif[0x0131] = "Adobe Photoshop 25.0 (Windows)"
    Image.fromarray(_pixels(0)).save(tmp_path / "edited.jpg", quality=90, exif=exif)
    camera = Image.Exif()
    camera[0x010F] = "Canon"  # Make, no Software tag
    Image.fromarray(_pixels(0)).save(tmp_path / "camera.jpg", quality=90, exif=camera)
    Image.fromarray(_pixels(0)).save(tmp_path / "bare.jpg", quality=90)
    edited, plain, bare = (_record(tmp_path / n) for n in ("edited.jpg", "camera.jpg", "bare.jpg"))
    assert (edited.exif, edited.software) == (1, "Adobe Photoshop 25.0 (Windows)")
    assert (plain.exif, plain.software) == (1, None) and (bare.exif, bare.software) == (0, None)
    assert [software_category(r.software) for r in (edited, plain)] == ["editor", "none"]
    assert software_category("Midjourney v6") == "other"


def test_quant_table_fingerprint_follows_the_tables(tmp_path):
    for name, seed, quality in (("a50", 1, 50), ("b50", 2, 50), ("a95", 1, 95)):
        Image.fromarray(_pixels(seed)).save(tmp_path / f"{name}.jpg", quality=quality)
    a50, b50, a95 = (_record(tmp_path / f"{n}.jpg") for n in ("a50", "b50", "a95"))
    assert a50.quant_table == b50.quant_table and len(a50.quant_table) == 8  # same q, other content
    assert a50.quant_table != a95.quant_table
    Image.fromarray(_pixels(1)).save(tmp_path / "p.png")
    assert _record(tmp_path / "p.png").quant_table is None


def test_subsampling_and_bit_depth(tmp_path):
    Image.fromarray(_pixels(3)).save(tmp_path / "s0.jpg", quality=90, subsampling=0)
    Image.fromarray(_pixels(3)).save(tmp_path / "s2.jpg", quality=90, subsampling=2)
    s0, s2 = _record(tmp_path / "s0.jpg"), _record(tmp_path / "s2.jpg")
    assert (s0.subsampling, s2.subsampling) == ("4:4:4", "4:2:0") and s0.bit_depth == s2.bit_depth == 8
    wide = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "g16.png")
    Image.fromarray(_pixels(3)).save(tmp_path / "rgb8.png")
    g16, rgb8 = _record(tmp_path / "g16.png"), _record(tmp_path / "rgb8.png")
    assert (g16.bit_depth, rgb8.bit_depth) == (16, 8) and g16.subsampling is None
    key = file_key(str(tmp_path / "g16.png"), "g16.png")  # the new fields survive the per-file store
    fields = tuple(getattr(g16, f) for f in ("sha256", "format", "mode", "width", "height", "jpeg_quality",
                                             "reason", "detail", "n_bytes", "exif", "software", "quant_table",
                                             "subsampling", "bit_depth"))
    with CheckStore(tmp_path / "s.sqlite") as store:
        store.put([key], [fields])
        assert store.lookup([key]) == [fields]


def _format_leak(tmp_path: Path, n: int = 12) -> dict[str, list[Sample]]:
    """Reals JPEG (quality 90), fakes PNG, the same kind of content and size: the format leaks."""
    samples = []
    for i in range(n):
        for label, ext in ((0, ".jpg"), (1, ".png")):
            path = tmp_path / f"{label}_{i}{ext}"
            Image.fromarray(_pixels(i)).save(path, **({"quality": 90} if ext == ".jpg" else {}))
            samples.append(Sample(str(path), label, "gen"))
    return {"train": samples}


def test_feature_shares_sum_to_one_and_name_the_leaking_family(tmp_path):
    report = add_metadata_probe(scan_dataset(_format_leak(tmp_path), progress=False), seed=0)
    shares = report.probe_shares["raw"]
    assert set(shares) == set(PROBE_FAMILIES) and sum(shares.values()) == pytest.approx(1.0)
    assert max(shares, key=shares.get) == "format" and shares["format"] > 0.5
    # the JPEG-only properties do not repeat the format: one quality and one table among the JPEGs weigh nothing
    assert shares["JPEG quality"] == shares["quant table"] == shares["subsampling"] == 0.0
    features, families = probe_design([r for r in report.records if r.readable])
    assert features.shape[1] == len(families) and families.count("format") == 2
    assert "share of the raw probe's decision" in report.format_table()
    assert report.to_dict()["metadata_probe"]["shares"]["raw"]["format"] == pytest.approx(shares["format"])
    same = [r for r in report.records if r.format == "JPEG"]  # one class only: no probe
    assert metadata_probe_shares(same) == {}


def test_a_probe_above_the_limit_after_the_equalizer_is_a_leakage_warning(tmp_path):
    records = _format_leak(tmp_path, n=2)["train"]
    report = DataReport([FileRecord(s.path, "train", s.generator, s.label, format="PNG") for s in records])
    report.equalized, report.equalizer = list(report.records), "ExtremeEqualizer(size=64, jpeg_quality=90)"
    report.probe = {"raw": 1.0, "equalized": 0.750}
    report.probe_shares = {"equalized": {"size": 0.7, "bytes per pixel": 0.3}}
    assert PROBE_WARNING_AUROC == 0.65
    (warning,) = probe_warnings(report)
    assert "AUROC 0.750 after the equalizer" in warning and "size 70%, bytes per pixel 30%" in warning
    table = report.format_table()
    assert "Leakage warnings (after the equalizer ExtremeEqualizer(size=64, jpeg_quality=90)): 1" in table
    assert report.to_dict()["leakage_warnings"] == [warning]
    report.probe["equalized"] = 0.64
    assert probe_warnings(report) == [] and "Leakage warnings (after the equalizer" in report.format_table()
    report.equalized, report.probe = None, {"raw": 0.99}  # without an equalizer the raw probe is no such warning
    assert probe_warnings(report) == []


def test_equalized_records_carry_the_header_of_the_re_encoded_jpeg(tmp_path):
    from features.equalizer import JPEG_SUBSAMPLING, ExtremeEqualizer

    report = add_metadata_probe(scan_dataset(_format_leak(tmp_path, n=6), progress=False),
                                ExtremeEqualizer(size=32, jpeg_quality=90), seed=0)
    assert {r.format for r in report.equalized} == {"JPEG"} and {r.exif for r in report.equalized} == {0}
    assert len({r.quant_table for r in report.equalized}) == 1 and {r.bit_depth for r in report.equalized} == {8}
    jpeg = next(r for r in report.records if r.format == "JPEG")
    assert report.equalized[0].quant_table == jpeg.quant_table  # the same IJG tables at quality 90
    expected = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JPEG_SUBSAMPLING, JPEG_SUBSAMPLING)
    assert {r.subsampling for r in report.equalized} == {expected}
    shares = report.probe_shares["equalized"]
    assert shares["format"] == shares["quant table"] == shares["subsampling"] == 0.0  # equalized away
