"""Progress: a tqdm bar on a terminal; in log files and CI logs a plain line every 10 % or 30 s, no ``\\r``."""

from __future__ import annotations

import io
import logging
import os
from types import SimpleNamespace

import pytest
from tqdm import tqdm

from experiments import process
from experiments.process import ProgressLines, progress, progress_bar, use_plain_logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def stderr_of_the_suite(monkeypatch, stream: io.StringIO) -> io.StringIO:
    """``stream`` as the stderr that :mod:`experiments.process` sees (pytest re-installs its own capture of
    ``sys.stderr`` between a fixture and its test, so the module's view is patched instead)."""
    monkeypatch.delenv("SUITE_PROGRESS", raising=False)
    monkeypatch.setattr(process, "sys", SimpleNamespace(stderr=stream))
    return stream


@pytest.fixture
def log_file(monkeypatch, caplog, capsys):
    """stderr is a file, not a terminal; returns a function giving everything written: stderr and log lines."""
    stderr = stderr_of_the_suite(monkeypatch, io.StringIO())
    caplog.set_level(logging.INFO)
    return lambda: stderr.getvalue() + capsys.readouterr().err + "".join(f"{r.getMessage()}\n" for r in caplog.records)


@pytest.fixture
def terminal(monkeypatch):
    return stderr_of_the_suite(monkeypatch, Terminal())


def test_off_a_terminal_a_long_loop_writes_about_ten_plain_lines(log_file):
    assert sum(1 for _ in progress(range(5000), "scoring")) == 5000
    written = log_file()
    lines = written.splitlines()
    assert "\r" not in written
    assert 10 <= len(lines) <= 11, lines
    assert lines[0].startswith("scoring: 500/5000 batch (10%)") and lines[-1].startswith("scoring: 5000/5000 batch (100%)")


def test_off_a_terminal_the_bar_object_writes_lines_too(log_file):
    with progress_bar(37, "check data", unit="img") as bar:
        assert isinstance(bar, ProgressLines)
        for _ in range(37):
            bar.set_postfix_str("gen_a")
            bar.update(1)
    written = log_file()
    assert "\r" not in written and len(written.splitlines()) <= 11
    assert written.splitlines()[-1].startswith("check data: 37/37 img (100%)") and "gen_a" in written


def test_a_line_every_30_s_between_the_tenths_and_without_a_total(log_file):
    now = [0.0]
    lines = ProgressLines("slow", total=1000, clock=lambda: now[0])
    for _ in range(50):  # 5 %: no tenth reached, but 75 s pass
        now[0] += 1.5
        lines.update(1)
    assert [ln.split(",")[0] for ln in log_file().splitlines()] == ["slow: 20/1000 it (2%)", "slow: 40/1000 it (4%)"]
    endless = ProgressLines("stream", total=None, clock=lambda: now[0])
    endless.update(7)
    now[0] += 31
    endless.update(1)
    assert log_file().splitlines()[-1].startswith("stream: 8 it, 31 s")


def test_disabled_writes_nothing(log_file):
    with progress_bar(100, "quiet", enabled=False) as bar:
        for _ in range(100):
            bar.update(1)
    assert log_file() == ""


def test_on_a_terminal_it_is_tqdm(terminal, capsys):
    wrapped = progress(range(3), "scoring")
    assert isinstance(wrapped, tqdm)
    assert list(wrapped) == [0, 1, 2]
    with progress_bar(3, "check data") as bar:
        assert isinstance(bar, tqdm) and not bar.disable
        bar.update(3)
    assert "\r" in capsys.readouterr().err  # tqdm's own redraws


def test_suite_progress_forces_either_way(monkeypatch, terminal):
    monkeypatch.setenv("SUITE_PROGRESS", "0")
    assert not process.on_terminal() and isinstance(progress_bar(3, "x"), ProgressLines)
    stderr_of_the_suite(monkeypatch, io.StringIO())
    monkeypatch.setenv("SUITE_PROGRESS", "1")
    assert process.on_terminal()


def test_download_bars_are_switched_off_only_off_a_terminal(monkeypatch, log_file):
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.delenv(name, raising=False)
    use_plain_logs()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_on_a_terminal_download_bars_stay(monkeypatch, terminal):
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.delenv(name, raising=False)
    use_plain_logs()
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ


def test_the_data_check_writes_lines_not_a_bar(log_file, tmp_path):
    from experiments.data.audit import scan_dataset
    from tests.conftest import make_genimage_tree, small_datamodule

    scan_dataset(small_datamodule(make_genimage_tree(tmp_path / "g", n=6, size=32)), progress=True)
    written = log_file()
    assert "\r" not in written
    check = [line for line in written.splitlines() if line.startswith("check data: ")]
    assert 1 <= len(check) <= 11 and check[-1].startswith("check data: 48/48 img (100%)")
