"""Entry points back large CPU tensors with transparent huge pages unless the user says otherwise; importing the
library changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

PROBE = """
from experiments.process import use_huge_pages
use_huge_pages()
import os, torch
x = torch.empty(64 << 20, dtype=torch.uint8)
x.fill_(1)
rollup = open("/proc/self/smaps_rollup").read()
print(os.environ["THP_MEM_ALLOC_ENABLE"], rollup.split("AnonHugePages:")[1].split()[0])
"""


def _probe(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists() or not THP_MODE.exists()
                    or re.search(r"\[never\]", THP_MODE.read_text()) is not None,
                    reason="needs Linux with transparent huge pages in 'always' or 'madvise' mode")
def test_large_tensors_get_huge_pages_unless_turned_off():
    setting, huge_kb = _probe(None)
    assert setting == "1" and huge_kb >= 32 * 1024  # most of the 64 MB tensor
    setting, huge_kb = _probe("0")
    assert setting == "0"
    if "[madvise]" in THP_MODE.read_text():  # in 'always' mode the kernel uses huge pages anyway
        assert huge_kb < 32 * 1024


def test_importing_the_library_sets_nothing():
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    code = ("import os, experiments, experiments.tasks.train, experiments.data.demo, experiments.bench.throughput; "
            "print(os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "unset"


def test_run_py_sets_it_before_torch():
    text = (ROOT / "run.py").read_text()
    assert text.index("use_huge_pages()") < text.index("from experiments.tasks.cli import main")
    # the command's module (the one @hydra.main) imports no torch of its own: the setting is read in time
    code = "import sys, experiments.tasks.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False"


def test_there_is_one_hydra_main():
    mains = [p.relative_to(ROOT).as_posix() for p in [ROOT / "run.py", *(ROOT / "experiments").rglob("*.py")]
             if "@hydra.main" in p.read_text()]
    assert mains == ["experiments/tasks/cli.py"], mains
