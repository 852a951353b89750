"""``task=check_data`` as a gate: exit 0 where training would go ahead, 2 where it would stop, and
``task.strict=true`` for leakage and duplicates across splits."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.tasks.cli import run_task
from tests.conftest import compose_config, make_genimage_tree
from tests.data.bad_files import write_bad_files

ROOT = Path(__file__).resolve().parents[2]
CHECK = ["task=check_data", "data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.num_workers=0"]


def check(root: Path, tmp_path: Path, *extra: str):
    return run_task(compose_config(CHECK + [f"data.root={root}", *extra], tmp_path))


def test_a_clean_tree_passes(tmp_path, capsys):
    report = check(make_genimage_tree(tmp_path / "clean"), tmp_path)
    assert report.n_images == 2 * 2 * 2 * 6 and not report.bad_files
    assert "Unusable files: 0 of 48" in capsys.readouterr().out


def test_too_many_unusable_files_exit_2_with_the_reason(tmp_path, capsys):
    root = make_genimage_tree(tmp_path / "bad")
    write_bad_files(root / "gen_a" / "val" / "ai", size=48, small=8)
    with pytest.raises(SystemExit) as stop:
        check(root, tmp_path)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert "TOO MANY: training stops" in captured.out  # the report is printed first
    assert "error: " in captured.err and "more than data.max_bad_fraction=0.01" in captured.err
    assert (tmp_path / "out" / "data_report.json").is_file()


def test_a_layout_error_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as stop:
        check(empty, tmp_path)
    assert stop.value.code == 2 and "Expected layout" in capsys.readouterr().err


def test_strict_fails_on_duplicates_across_splits_and_the_default_does_not(tmp_path, capsys):
    root = make_genimage_tree(tmp_path / "dup")
    shutil.copy(root / "gen_a" / "train" / "ai" / "ai_000.png", root / "gen_a" / "val" / "ai" / "copy.png")
    report = check(root, tmp_path)  # duplicates are reported, not failures
    assert report.cross_split_duplicate_pairs >= 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        check(root, tmp_path, "task.strict=true")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "task.strict=true" in err and "duplicate pair(s) across splits" in err


def test_the_command_itself_exits_2(tmp_path):
    root = make_genimage_tree(tmp_path / "bad")
    write_bad_files(root / "gen_a" / "val" / "ai", size=48, small=8)
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *CHECK, f"data.root={root}", f"paths.root_dir={tmp_path}",
         f"hydra.run.dir={tmp_path / 'run'}", f"logger.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}"],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: " in done.stderr and "cannot be used" in done.stderr
