"""``python -m experiments.bench.scale`` generates its trees, times every stage in its own process and judges the
start-up's scaling."""

from __future__ import annotations

import csv

import pytest

from experiments.bench import scale


def test_generated_tree_has_the_layout_and_is_reused(tmp_path):
    root = scale.generated_tree(80, tmp_path)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 80 and {p.parent.relative_to(root).parts for p in files} == set(scale.FOLDERS)
    stamp = files[0].stat().st_mtime_ns
    assert scale.generated_tree(80, tmp_path) == root and files[0].stat().st_mtime_ns == stamp


def test_a_smaller_tree_linked_from_a_larger_equals_one_written_afresh(tmp_path):
    larger = scale.generated_tree(80, tmp_path / "linked")
    linked = scale.generated_tree(40, tmp_path / "linked", larger=larger)
    fresh = scale.generated_tree(40, tmp_path / "fresh")
    names = sorted(p.relative_to(fresh) for p in fresh.rglob("*.png"))
    assert len(names) == 40 and names == sorted(p.relative_to(linked) for p in linked.rglob("*.png"))
    assert all((linked / n).read_bytes() == (fresh / n).read_bytes() for n in names)
    assert (linked / names[0]).stat().st_ino == (larger / names[0]).stat().st_ino


def test_verdicts_flag_a_cost_per_image_that_grows():
    def row(size, stage, seconds, rss):
        return scale.Row(size, stage, seconds, size, size / seconds, 1000 * seconds / size, rss)

    flat = scale.verdicts([row(100, "walk", 1.0, 500), row(1000, "walk", 11.0, 600)])
    assert [ok for _, ok, _ in flat] == [True, True]
    growing = scale.verdicts([row(100, "walk", 1.0, 500), row(1000, "walk", 20.0, 3000)])
    assert [ok for _, ok, _ in growing] == [False, False]


def test_verdicts_hold_the_stored_check_to_a_tenth_of_a_fresh_one():
    def rows(cached):
        return [scale.Row(1000, "check fresh", 2.0, 1000, 500.0, 2.0, 600.0),
                scale.Row(1000, "check cached", cached, 1000, 1000 / cached, cached, 600.0)]

    (name, ok, detail), = scale.verdicts(rows(0.2))
    assert ok and name == "check cached at 1000: share of a fresh check" and "10.0 %" in detail
    assert [ok for _, ok, _ in scale.verdicts(rows(0.21))] == [False]


def test_bench_scale_runs_at_a_tiny_size(tmp_path, capsys):
    rows = scale.main(["--sizes", "200", "--epoch-images", "32,16", "--cache", str(tmp_path / "cache"),
                       "--out", str(tmp_path / "out")])
    stages = {r.stage: r for r in rows}
    assert set(scale.START_UP) | {"epoch radial_angular_logreg", "epoch npr", "pack"} == set(stages)
    for stage in scale.START_UP:
        assert stages[stage].images == 200 and stages[stage].seconds > 0 and stages[stage].peak_rss_mb > 0
    assert stages["epoch npr"].images == 16 and stages["epoch radial_angular_logreg"].images == 32
    assert stages["pack"].images == 200 and stages["pack"].seconds > 0
    assert "[200] pack:" in capsys.readouterr().out
    table = list(csv.DictReader((tmp_path / "out" / "bench_scale.csv").open()))
    assert len(table) == len(rows) and (tmp_path / "out" / "bench_scale.md").read_text().startswith("Start-up at scale")


@pytest.mark.slow
def test_bench_scale_smallest_default_size_scales(tmp_path):
    n = scale.DEFAULT_SIZES[0]
    rows = scale.bench([n // 5, n], [], tmp_path / "cache", log=lambda *_: None)
    checks = scale.verdicts(rows)
    assert checks and all(ok for _, ok, _ in checks), checks
    assert {r.images for r in rows if r.stage in scale.START_UP} == {n // 5, n}
