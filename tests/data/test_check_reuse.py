"""A check of unchanged files redoes none of its work: the metadata probe comes from the store, the manifest
reuses the check's content hashes, and the datamodules own their data gate (``preflight``)."""

from __future__ import annotations

import dataclasses

import pytest

from experiments.data import integrity
from experiments.data.audit import BadDataError, PreflightSettings, data_check_cache_dir, preflight, scan_dataset
import importlib

preflight_module = importlib.import_module("experiments.data.audit.preflight")
from experiments.data.audit.preflight import add_stored_probe, check_store_path, probe_key
from experiments.data.audit.store import CheckStore
from experiments.data.datamodule import DetectorDataModule
from features.equalizer import ExtremeEqualizer
from tests.conftest import make_genimage_tree


def _dm(root, **kw) -> DetectorDataModule:
    return DetectorDataModule(name="t", root=str(root), crop_size=32, resize_size=None, num_workers=0, **kw)


def _scanned(tmp_path):
    dm = _dm(make_genimage_tree(tmp_path / "g", n=3, size=32))
    cache = data_check_cache_dir(tmp_path / "cache")
    return dm, cache, check_store_path(cache, dm.name), scan_dataset(dm, progress=False, cache_dir=cache)


def test_probe_is_read_back_from_the_store_with_its_equalized_records(tmp_path, monkeypatch):
    dm, cache, store, report = _scanned(tmp_path)
    equalizer = ExtremeEqualizer(size=32, jpeg_quality=90)
    first = add_stored_probe(report, equalizer, 0, store)
    assert set(first.probe) == {"raw", "equalized"} and first.equalized
    computed = (dict(first.probe), list(first.equalized), first.equalizer)

    monkeypatch.setattr(preflight_module, "add_metadata_probe", lambda *a, **k: pytest.fail("probe fitted again"))
    again = add_stored_probe(scan_dataset(dm, progress=False, cache_dir=cache), equalizer, 0, store)
    assert (again.probe, again.equalized, again.equalizer) == computed
    assert {**again.to_dict(), "seconds": 0} == {**first.to_dict(), "seconds": 0}


def test_probe_is_computed_again_when_its_inputs_change(tmp_path, monkeypatch):
    dm, cache, store, report = _scanned(tmp_path)
    add_stored_probe(report, None, 0, store)
    calls = []
    real = preflight_module.add_metadata_probe
    monkeypatch.setattr(preflight_module, "add_metadata_probe", lambda *a, **k: calls.append(1) or real(*a, **k))
    add_stored_probe(report, None, 1, store)  # another seed
    add_stored_probe(report, ExtremeEqualizer(size=32, jpeg_quality=90), 0, store)  # an equalizer
    changed = scan_dataset(dm, progress=False, cache_dir=cache)
    rewritten = changed.records[0]
    changed.records[0] = dataclasses.replace(rewritten, sha256="0" * 64)
    assert probe_key(changed, None, 0) != probe_key(report, None, 0)
    assert len(calls) == 2
    with CheckStore(store) as kept:
        assert kept.result(probe_key(report, None, 0))["probe"]["raw"] == report.probe["raw"]


def test_preflight_keeps_the_probe_under_the_cache_dir(tmp_path, monkeypatch):
    dm = _dm(make_genimage_tree(tmp_path / "g", n=3, size=32))
    settings = PreflightSettings(cache_dir=data_check_cache_dir(tmp_path / "cache"), progress=False)
    first = preflight(dm, settings)
    monkeypatch.setattr(preflight_module, "add_metadata_probe", lambda *a, **k: pytest.fail("probe fitted again"))
    assert preflight(_dm(dm.root), settings).probe == first.probe


def test_manifest_reuses_the_checks_hashes(tmp_path, monkeypatch):
    dm, _, _, report = _scanned(tmp_path)
    known = report.content_digests()
    splits = dm.check_layout()
    expected = integrity.build_manifest(splits)  # every file hashed
    assert {p: v for p, v in known.items()} == {s.path: integrity.file_digest(s.path)
                                                 for ss in splits.values() for s in ss}
    monkeypatch.setattr(integrity, "file_digest", lambda p: pytest.fail(f"{p} hashed again"))
    assert integrity.build_manifest(splits, known=known) == expected


def test_manifest_hashes_the_files_the_check_did_not(tmp_path):
    dm, _, _, report = _scanned(tmp_path)
    splits = dm.check_layout()
    known = report.content_digests()
    first = splits["train"][0].path
    del known[first]
    known[splits["train"][1].path] = (1, "f" * 64)  # what the check found is what the manifest holds
    rows = {e.relpath: e for e in integrity.build_manifest(splits, known=known)}
    assert (rows[splits["train"][0].split_name].size, rows[splits["train"][0].split_name].sha256) == \
        integrity.file_digest(first)
    assert rows[splits["train"][1].split_name].sha256 == "f" * 64


def test_the_datamodules_own_their_data_gate(tmp_path):
    from experiments.data.packed import PackedDataModule
    from experiments.data.shards import Bad, PackInfo

    dm = _dm(make_genimage_tree(tmp_path / "g", n=3, size=32))
    assert dm.preflight(PreflightSettings(progress=False)).n_images == sum(map(len, dm.splits.values()))
    packed = PackedDataModule(name="p", root=str(tmp_path / "pack"), crop_size=32, resize_size=None,
                              max_bad_fraction=0.1)
    packed.info = PackInfo("encoded", ["gen_a"], ["nature", "ai"], {"train": 10}, {"train": []}, "")
    assert packed.preflight(PreflightSettings(progress=False)) is None  # its files were checked when packed
    packed.info.bad["train"] = [Bad(f"x{i}.png", "truncated") for i in range(5)]
    with pytest.raises(BadDataError, match="of the pack"):
        packed.preflight(PreflightSettings(progress=False))


@pytest.mark.parametrize("path, root, expected", [
    ("/d/gen/train/ai/x.png", "/d", "gen/train/ai/x.png"),  # the walk's paths: no abspath needed
    ("/d/gen/../gen/x.png", "/d", "gen/x.png"),  # not normalised: the general path
    ("/d//gen/./x.png", "/d/", "gen/x.png"),
    ("/d/.hidden/x.png", "/d", ".hidden/x.png"),
    ("/elsewhere/x.png", "/d", "/elsewhere/x.png"),
])
def test_relative_name_of_normalised_and_other_paths(path, root, expected):
    from experiments.data.layouts.base import relative_name

    assert relative_name(path, root) == expected


def test_store_keeps_the_newest_results(tmp_path):
    from experiments.data.audit.store import KEEP_RESULTS

    with CheckStore(tmp_path / "s.sqlite") as store:
        for i in range(KEEP_RESULTS + 3):
            store.put_result(f"k{i}", {"i": i})
        assert store.result("k0") is None and store.result("k2") is None
        assert store.result("k3") == {"i": 3} and store.result(f"k{KEEP_RESULTS + 2}") == {"i": KEEP_RESULTS + 2}
