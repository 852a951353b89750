"""The data check at scale: the process pool, the per-file store keyed by relative path, ``data.check`` sampling,
and the walk index that the jobs of a sweep share."""

from __future__ import annotations

import importlib
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from experiments.data import walk as walk_module
from experiments.data.audit import inspection, scan_dataset
from experiments.data.audit.preflight import DataCheckOff
from experiments.data.audit.sampling import DEFAULT_SAMPLE, SAMPLE_ABOVE, BadCheckSetting, DataCheck, stratified_sample
from experiments.data.audit.store import CheckStore, file_key, file_keys, scan_key
from experiments.data.datamodule import DetectorDataModule
from experiments.data.layouts import GenImageFlat, Sample
from experiments.data.walk import ImageWalk
from tests.conftest import make_genimage_tree

preflight_module = importlib.import_module("experiments.data.audit.preflight")  # the package exports preflight()


def make_dm(root: Path, **kw) -> DetectorDataModule:
    kw = {"crop_size": 16, "resize_size": None, "num_workers": 0, **kw}
    return DetectorDataModule("genimage_tiny", root, GenImageFlat("nature", "ai"), **kw)


def age_folders(root: Path, seconds: float = 60.0) -> None:
    """Set every folder's mtime ``seconds`` in the past, as a dataset that has not just been written."""
    stamp = time.time() - seconds
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (stamp, stamp))


@pytest.fixture
def count_inspected(monkeypatch):
    """How many files the scans inspect (the others come from the store)."""
    seen = Counter()
    real = preflight_module.inspect_paths

    def counting(paths, *args, **kwargs):
        seen["files"] += len(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(preflight_module, "inspect_paths", counting)
    return seen


def test_process_pool_gives_the_records_of_one_process(tmp_path, monkeypatch):
    root = make_genimage_tree(tmp_path / "g", n=5)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    (root / "broken.png").write_bytes(b"not a png")
    paths.append(str(root / "broken.png"))
    alone = inspection.inspect_paths(paths, workers=1)
    monkeypatch.setattr(inspection, "POOL_MIN_FILES", 0)
    pooled = inspection.inspect_paths(paths, workers=2)
    assert pooled == alone and alone[-1][6] is not None and alone[0][6] is None


def test_store_is_reused_by_the_same_dataset_mounted_elsewhere(tmp_path, count_inspected):
    root = make_genimage_tree(tmp_path / "here", n=4)
    cache = tmp_path / "cache" / "data_checks"
    first = scan_dataset(make_dm(root), progress=False, cache_dir=cache)
    assert count_inspected["files"] == first.n_images == 32
    assert (cache / "genimage_tiny.sqlite").is_file()
    moved = tmp_path / "mounted" / "elsewhere"
    shutil.copytree(root, moved)  # copy2: sizes and mtimes kept, as rsync -a
    again = scan_dataset(make_dm(moved), progress=False, cache_dir=cache)
    assert count_inspected["files"] == 32  # nothing inspected again
    assert [r.sha256 for r in again.records] == [r.sha256 for r in first.records]
    assert all(r.path.startswith(str(moved)) for r in again.records)


def test_a_rewritten_file_is_inspected_again(tmp_path, count_inspected):
    root = make_genimage_tree(tmp_path / "g", n=3)
    cache = tmp_path / "data_checks"
    scan_dataset(make_dm(root), progress=False, cache_dir=cache)
    target = next(root.rglob("*.png"))
    Image.new("RGB", (40, 40), (1, 2, 3)).save(target)
    stamp = time.time() + 5
    os.utime(target, (stamp, stamp))
    report = scan_dataset(make_dm(root), progress=False, cache_dir=cache)
    assert count_inspected["files"] == 24 + 1
    assert next(r for r in report.records if r.path == str(target)).width == 40


def test_store_lookup_misses_on_other_size_or_mtime(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    key = file_key(str(path), "a.png")
    fields = inspection.inspect_path(str(path))
    with CheckStore(tmp_path / "s.sqlite") as store:
        store.put([key], [fields])
        assert store.lookup([key]) == [fields]
        assert store.lookup([(key[0], key[1] + 1, key[2]), (key[0], key[1], key[2] + 1), ("b.png", 1, 1)]) == [None] * 3


@pytest.fixture
def count_lookups(monkeypatch):
    """The number of keys of each row-by-row lookup of the store."""
    calls: list[int] = []
    real = CheckStore.lookup

    def counting(self, keys):
        calls.append(len(keys))
        return real(self, keys)

    monkeypatch.setattr(CheckStore, "lookup", counting)
    return calls


def test_a_stored_dataset_is_read_as_one_scan_not_row_by_row(tmp_path, count_inspected, count_lookups):
    root = make_genimage_tree(tmp_path / "g", n=3)
    cache = tmp_path / "data_checks"
    first = scan_dataset(make_dm(root), progress=False, cache_dir=cache)
    assert count_lookups == [24] and count_inspected["files"] == 24
    again = scan_dataset(make_dm(root), progress=False, cache_dir=cache)
    assert count_lookups == [24] and count_inspected["files"] == 24  # one stored scan, no row, no file read
    assert again.records == first.records
    target = sorted(root.rglob("*.png"))[5]
    stamp = time.time() + 5
    os.utime(target, (stamp, stamp))  # one mtime changed: the stored scan no longer matches, the rows do
    touched = scan_dataset(make_dm(root), progress=False, cache_dir=cache)
    assert count_lookups == [24, 24] and count_inspected["files"] == 25
    assert [r.sha256 for r in touched.records] == [r.sha256 for r in first.records]


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo the store ran code",))


def test_scan_key_and_a_tampered_scan(tmp_path, caplog):
    import pickle

    keys = [("a.png", 10, 1), ("b.png", 20, 2)]
    fields = [(None, "PNG", "RGB", 8, 8, None, None, "", 10, 0, None, None, None, 8)] * 2
    assert scan_key(keys) == scan_key(list(keys)) != scan_key(keys[::-1])
    assert len({scan_key(keys), scan_key([keys[0], ("b.png", 20, 3)]), scan_key([("a.png", 11, 1), keys[1]])}) == 3
    with CheckStore(tmp_path / "s.sqlite") as store:
        store.put_scan(keys, fields)
        assert store.scan(keys) == fields
        assert store.scan(keys[:1]) is None
        store.put_scan([("c.png", -1, 0)], fields[:1])  # a file that cannot be stat-ed is never stored whole
        assert store.scan([("c.png", -1, 0)]) is None
        with store._connect() as db:
            db.execute("UPDATE scans SET fields=? WHERE key=?", (pickle.dumps([_Payload(), fields[1]]), scan_key(keys)))
        assert store.scan(keys) is None  # a class or function in the value is refused, not called
    assert "only plain values are read" in caplog.text


def test_file_keys_equal_file_key_of_each_path(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    for name in ("d/a.png", "d/b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    paths = [str(tmp_path / "d/a.png"), str(tmp_path / "d/missing.png"), str(tmp_path / "d/b.png"), "c.png",
             str(tmp_path / "gone" / "x.png"), str(tmp_path / "c.png")]
    rel = [f"r{i}" for i in range(len(paths))]
    def by_path(path, relpath):  # the key from a plain stat of the whole path
        try:
            st = os.stat(path)
        except OSError:
            return relpath, -1, 0
        return relpath, st.st_size, st.st_mtime_ns

    assert file_keys(paths, rel) == [by_path(p, r) for p, r in zip(paths, rel)]
    assert [file_key(p, r) for p, r in zip(paths, rel)] == file_keys(paths, rel)
    assert [k[1] for k in file_keys(paths, rel)][1] == -1 and file_keys(paths, rel)[4][1] == -1


def test_data_check_setting_parses_and_resolves():
    assert DataCheck.parse("sample:500") == DataCheck("sample", 500) and str(DataCheck.parse("FULL")) == "full"
    for bad in ("sample:0", "sample:x", "some", "sample"):
        with pytest.raises(BadCheckSetting, match="data.check"):
            DataCheck.parse(bad)
    used, why = DataCheck().resolve(SAMPLE_ABOVE)
    assert used == DataCheck("sample", DEFAULT_SAMPLE) and str(SAMPLE_ABOVE) in why and "sample" in why
    used, why = DataCheck().resolve(SAMPLE_ABOVE - 1)
    assert used.mode == "full" and "every file" in why
    assert DataCheck("sample", 10).resolve(5)[0].mode == "full"
    with pytest.raises(BadCheckSetting):
        make_dm(Path("."), check="half")


def test_stratified_sample_is_seeded_proportional_and_covers_every_stratum():
    jobs = [(Sample(f"/d/{g}/{c}/{i}.png", c, g, f"{g}/{c}/{i}.png"), split)
            for split, n in (("train", 60), ("test", 20)) for g in ("a", "b") for c in (0, 1) for i in range(n)]
    jobs.append((Sample("/d/rare.png", 1, "rare", "rare.png"), "test"))
    picked = stratified_sample(jobs, 40, seed=3)
    assert picked == stratified_sample(jobs, 40, seed=3) != stratified_sample(jobs, 40, seed=4)
    assert len(picked) == 40 and picked == sorted(set(picked))
    strata = Counter((jobs[i][1], jobs[i][0].generator, jobs[i][0].label) for i in picked)
    assert strata[("test", "rare", 1)] == 1 and len(strata) == 9
    assert 3 * strata[("test", "a", 0)] <= strata[("train", "a", 0)] + 3  # 60:20 files, so about 3:1


def test_sampled_check_says_so_and_estimates_the_bad_share(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=10)
    (root / "gen_a" / "train" / "ai" / "ai_000.png").write_bytes(b"broken")
    report = scan_dataset(make_dm(root, check="sample:16"), progress=False)
    assert report.sampled and report.n_images == 16 and report.population == 80
    assert "stratified sample of 16 of 80" in report.check
    text = report.format_table()
    assert "Check: data.check=sample:16" in text and "an estimate from a stratified sample of 16 of 80" in text
    assert report.to_dict()["sampled"] is True and report.summary_metrics()["data/checked_fraction"] == 0.2
    full = scan_dataset(make_dm(root), progress=False)
    assert not full.sampled and full.n_images == 80 and "every file" in full.check


def test_check_off_reads_nothing_and_warns(tmp_path, count_inspected):
    root = make_genimage_tree(tmp_path / "g", n=2)
    with pytest.warns(DataCheckOff, match="data.check=off"):
        report = scan_dataset(make_dm(root, check="off"), progress=False, cache_dir=tmp_path / "c")
    assert count_inspected["files"] == 0 and report.n_images == 0 and not report.checked
    assert "NOT CHECKED" in report.format_table()


@pytest.fixture
def count_listings(monkeypatch):
    calls = Counter()
    real = walk_module.list_folder

    def counting(folder):
        calls["folders"] += 1
        return real(folder)

    monkeypatch.setattr(walk_module, "list_folder", counting)
    return calls


def test_second_job_reads_the_walk_index_instead_of_walking(tmp_path, count_listings):
    root = make_genimage_tree(tmp_path / "g", n=3)
    age_folders(root)
    index = tmp_path / "walks"
    first = make_dm(root, walk_index_dir=index).check_layout()
    listed = count_listings["folders"]
    assert listed >= 8 and any(index.glob("*.json"))
    second = make_dm(root, walk_index_dir=index).check_layout()
    assert count_listings["folders"] == listed  # not one folder listed again
    assert second == first


def test_adding_a_file_lists_its_folder_again(tmp_path, count_listings):
    root = make_genimage_tree(tmp_path / "g", n=3)
    age_folders(root)
    index = tmp_path / "walks"
    walk = ImageWalk(root, index_dir=index)
    before = walk.images(root)
    walk.save_index()
    added = root / "gen_b" / "val" / "ai" / "new.png"
    Image.new("RGB", (16, 16)).save(added)
    count_listings.clear()
    again = ImageWalk(root, index_dir=index)
    after = again.images(root)
    assert count_listings["folders"] == 1 and again.index.listed == 1
    assert set(after) - set(before) == {added}
    added.unlink()
    assert ImageWalk(root, index_dir=index).images(root) == before


def test_store_lookup_of_a_few_keys_in_a_large_table(tmp_path, monkeypatch):
    from experiments.data.audit import store as store_module

    fields = (None, "PNG", "RGB", 8, 8, None, None, "", 100, 0, None, None, None, 8)
    monkeypatch.setattr(store_module, "LOOKUP_BATCH", 3)
    with CheckStore(tmp_path / "s.sqlite") as store:
        store.put([(f"f{i}.png", 100, i) for i in range(40)], [fields] * 40)
        few = [("f3.png", 100, 3), ("f7.png", 100, 7), ("f8.png", 100, 0), ("f9.png", 100, 9), ("nope", 1, 1)]
        assert store.lookup(few) == [fields, fields, None, fields, None]  # by index, in batches of 3
        every = [(f"f{i}.png", 100, i) for i in range(40)]
        assert store.lookup(every) == [fields] * 40  # one pass over the table


def test_collector_is_paused_during_a_scan_and_resumed_after(monkeypatch):
    import gc

    from experiments.data.walk import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failing scan")
    assert gc.isenabled()
