"""README.md's "Running" section, run: every command of its code blocks, in order, at toy size, on the demo data,
so that the README cannot drift from the code.

The README is parsed at test time (:func:`section_commands`): the shell lines of the section's ``bash``/``sh``
code blocks, their ``# ...`` comments dropped, ``\\`` continuations joined. :func:`plan` maps each line to a command:

* ``python run.py ARGS`` and ``spectral-suite ARGS``: ``sys.executable run.py ARGS`` followed by :data:`TOY`, the
  toy-size overrides (at most 4 images per generator, class and split; 32 px crops at native size; batch 8 in the
  main process; one epoch; random weights; no diagnostic plots; 20 bootstrap resamples; ``ood=quick``) and the
  outputs in pytest's folder (``paths.root_dir``, the MLflow store ``logger.tracking_uri``; Hydra's run and sweep
  folders lie under ``paths.log_dir``, so there too). Without CUDA, ``trainer.accelerator=cpu
  trainer.devices=1`` follow, so that ``trainer=gpu`` composes and trains on the CPU.
* ``python -m experiments.tasks.detect ARGS`` and ``spectral-detect ARGS``: the module under ``sys.executable``;
  it finds the toy store through ``SUITE_ROOT``. ``python -m experiments.data.demo ARGS``: as written.
* ``make TARGET [VAR=value ...]``: the commands its recipe prints under ``make -n`` (the venv taken as built),
  each mapped as above; a recipe line of another kind (a shell loop, ``.venv/bin/mlflow``) fails the test. No
  target is skipped: the section has no ``make`` line today, and a ``make test`` or ``make venv`` line added
  there would fail here on purpose (it runs pytest or pip, not the suite).
* leading ``VAR=value`` words are the command's environment.
* placeholders: ``/path/to/genimage_tiny`` is the demo tree (GenImage's flat layout, ``nature``/``ai``);
  ``<run id | run folder>`` the newest finished training run in the toy store when the line runs;
  ``<image or folder>`` one demo folder of images.

Any other command or placeholder fails the fast test below, so a new README line cannot slip by unrun. Every
command runs with the tmp folder as working directory and ``SUITE_ROOT``, so relative outputs
(``--out results.csv``) land there; the project's own store, logs, reports and data are checked untouched, and
no command may log artifacts to ``./mlruns`` of its working directory instead of the store's artifact folder.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "Running"
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}

#: toy-size overrides appended to every ``run.py`` command ({tmp}: pytest's folder)
TOY = [
    "paths.root_dir={tmp}", "logger.tracking_uri=sqlite:///{tmp}/mlruns.db",
    "data.max_per_class=4", "data.crop_size=32", "data.resize_size=null", "data.batch_size=8", "data.num_workers=0",
    "trainer.max_epochs=1", "++model.backbone.pretrained=false", "diagnostics=false",
    "stats.bootstrap_resamples=20", "ood=quick",
]
CPU = ["trainer.accelerator=cpu", "trainer.devices=1"]
#: modules a README line may run with ``python -m`` (and the console script of the same command)
MODULES = {"experiments.tasks.detect", "experiments.data.demo"}
SCRIPTS = {"spectral-detect": "experiments.tasks.detect"}  # spectral-suite is run.py
#: values filled in when a line runs
RUN_ID, IMAGES = "@RUN_ID@", "@IMAGES@"
PLACEHOLDERS = {"run id | run folder": RUN_ID, "run id": RUN_ID, "run folder": RUN_ID,
                "image or folder": IMAGES, "images or folders": IMAGES, "image": IMAGES, "folder": IMAGES}
#: ``/path/to/<name>`` -> the toy path ({demo}: the demo tree)
PATHS = {"genimage_tiny": "{demo}"}
#: the folder of images given for ``<image or folder>``, inside the demo tree
IMAGE_FOLDER = "deconv/val/ai"


class Unmapped(AssertionError):
    """A README command the test cannot run at toy size: map it here (or fix the README)."""


@dataclass
class Step:
    line: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def section_commands(text: str, section: str = SECTION) -> list[str]:
    """The shell commands of the code blocks of ``## <section>``, one per logical line, in order."""
    lines = text.splitlines()
    if f"## {section}" not in lines:
        raise Unmapped(f"README.md has no '## {section}' section")
    commands, fence, pending = [], None, ""
    for line in lines[lines.index(f"## {section}") + 1:]:
        if fence is None and re.match(r"#{1,2} ", line):
            break
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:].strip().lower() if fence is None else None
            continue
        text_line = line.strip().removeprefix("$ ")
        if fence not in SHELL_BLOCKS or not text_line or text_line.startswith("#"):
            continue
        if text_line.endswith("\\"):
            pending += text_line[:-1] + " "
            continue
        commands.append(pending + text_line)
        pending = ""
    if not commands:
        raise Unmapped(f"README.md's '## {section}' section shows no shell command")
    return commands


def _words(line: str) -> list[str]:
    """Shell words of ``line`` with its ``<...>`` placeholders and ``/path/to/<name>`` paths replaced."""
    found: list[str] = []

    def mark(match: re.Match) -> str:
        found.append(match.group(1).strip())
        return f"@PH{len(found) - 1}@"

    words = shlex.split(re.sub(r"<([^<>]+)>", mark, line), comments=True)
    out = []
    for word in words:
        for i, name in enumerate(found):
            if f"@PH{i}@" in word:
                if name not in PLACEHOLDERS:
                    raise Unmapped(f"`{line}`: no toy value for the placeholder <{name}>; add one to PLACEHOLDERS")
                word = word.replace(f"@PH{i}@", PLACEHOLDERS[name])
        for name in re.findall(r"/path/to/([\w.-]+)", word):
            if name not in PATHS:
                raise Unmapped(f"`{line}`: no toy value for /path/to/{name}; add one to PATHS")
            word = word.replace(f"/path/to/{name}", PATHS[name])
        out.append(word)
    return out


def _make_lines(args: list[str], line: str) -> list[str]:
    """The commands ``make ARGS`` runs, as ``make -n`` prints them (the venv taken as built)."""
    done = subprocess.run(["make", "-s", "-n", "-o", ".venv/.installed", *args, "PY=python"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise Unmapped(f"`{line}`: make -n failed: {done.stderr.strip()}")
    lines, pending = [], ""
    for text_line in done.stdout.splitlines():
        if text_line.endswith("\\"):
            pending += text_line[:-1] + " "
            continue
        command = (pending + text_line).strip()
        # comments, make's own notes, and the lines a recipe only prints (`echo`, e.g. make demo's next steps)
        if command and not command.startswith(("#", "make:", "make[", "echo ")) and command != "echo":
            lines.append(pending + text_line)
        pending = ""
    if not lines:
        raise Unmapped(f"`{line}`: its recipe runs no command")
    return lines


def _step(words: list[str], line: str, tmp: Path, cuda: bool) -> list[Step]:
    env = {}
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    head, rest = (words[0], words[1:]) if words else ("", [])
    fill = {"tmp": str(tmp), "demo": str(tmp / "data" / "demo")}
    if head == "make":
        return [s for made in _make_lines(rest, line) for s in _step(_words(made), f"{line}: {made}", tmp, cuda)]
    python = head in ("python", "python3")
    if (python and rest[:1] == ["run.py"]) or head == "spectral-suite":
        args = rest[1:] if python else rest
        toy = [override.format(**fill) for override in TOY] + ([] if cuda else CPU)
        argv = [sys.executable, str(ROOT / "run.py"), *args, *toy]
    elif python and rest[:1] == ["-m"] and rest[1:2] and rest[1] in MODULES:
        argv = [sys.executable, "-m", *rest[1:]]
    elif head in SCRIPTS:
        argv = [sys.executable, "-m", SCRIPTS[head], *rest]
    else:
        raise Unmapped(f"`{line}`: the test does not know how to run this command at toy size; map it in "
                       f"{Path(__file__).name}")
    return [Step(line, [word.replace("{demo}", fill["demo"]) for word in argv], env)]


def plan(text: str, tmp: Path, cuda: bool | None = None) -> list[Step]:
    """The toy-size commands of the README's Running section, in order."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return [s for line in section_commands(text) for s in _step(_words(line), line, tmp, cuda)]


def newest_training_run(tmp: Path) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="tags.task = 'train' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    if not runs:
        raise AssertionError("a README line needs a run id, but no earlier line left a finished training run")
    return runs[0].info.run_id


def run_steps(steps: list[Step], tmp: Path, timeout: float = 600) -> list[tuple[str, float]]:
    """Run ``steps`` in order in ``tmp``; fail with the command line and its output's tail on a non-zero exit."""
    env = {**os.environ, "SUITE_ROOT": str(tmp), "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"}
    times = []
    for step in steps:
        argv = list(step.argv)
        if any(RUN_ID in w for w in argv):
            run_id = newest_training_run(tmp)
            argv = [w.replace(RUN_ID, run_id) for w in argv]
        argv = [w.replace(IMAGES, str(tmp / "data" / "demo" / IMAGE_FOLDER)) for w in argv]
        start = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=tmp, env={**env, **step.env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
            output, code = done.stdout, (f"exit status {done.returncode}" if done.returncode else 0)
        except subprocess.TimeoutExpired as timed_out:
            output, code = (timed_out.stdout or b"").decode(errors="replace"), f"timeout after {timeout:.0f} s"
        if code != 0:
            tail = "\n".join(output.splitlines()[-40:])
            pytest.fail(f"README line `{step.line}` failed ({code}):\n  {shlex.join(argv)}\n"
                        f"--- last 40 lines of its output ---\n{tail}", pytrace=False)
        times.append((step.line, time.monotonic() - start))
    return times


# -- the mapping (fast) ----------------------------------------------------------------------------------------
def test_every_command_of_the_running_section_maps_to_a_toy_command(tmp_path):
    lines = section_commands(README.read_text())
    steps = plan(README.read_text(), tmp_path, cuda=False)
    assert len(steps) >= len(lines) >= 5
    for step in steps:
        assert step.argv[0] == sys.executable
        if str(ROOT / "run.py") in step.argv:
            assert step.argv[-len(CPU):] == CPU and f"paths.root_dir={tmp_path}" in step.argv
        assert not any("/path/to/" in w or "<" in w for w in step.argv), step.argv


@pytest.mark.parametrize("line", [
    "python run.py data=derm data.root=/path/to/derm",              # a path without a toy value
    "python run.py task=evaluate ckpt=<checkpoint>",                 # an unknown placeholder
    "pip install -e .",                                              # a command the test does not run
    "make venv",                                                     # a recipe of pip commands
])
def test_a_command_the_test_cannot_map_fails(tmp_path, line):
    with pytest.raises(Unmapped):
        plan(f"## {SECTION}\n\n```bash\n{line}\n```\n", tmp_path, cuda=False)


def test_a_make_line_runs_its_recipe_with_the_toy_overrides(tmp_path):
    steps = plan(f"## {SECTION}\n\n```bash\nmake demo   # the demo\n```\n", tmp_path, cuda=False)
    assert [s.argv[1:3] for s in steps][:2] == [["-m", "experiments.data.demo"], [str(ROOT / "run.py"), "-m"]]
    assert all("trainer.max_epochs=1" in s.argv for s in steps[1:]) and len(steps) == 5


# -- the commands, run (slow) ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_running_section_runs_in_order_at_toy_size(tmp_path):
    outputs = [ROOT / name for name in ("mlruns.db", "mlartifacts", "logs", "reports", "data")]
    before = {p: p.stat().st_mtime if p.exists() else None for p in outputs}
    steps = plan(README.read_text(), tmp_path)
    built = subprocess.run([sys.executable, "-m", "experiments.data.demo", "--out", str(tmp_path / "data" / "demo"),
                            "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    times = run_steps(steps, tmp_path)
    print("\n".join(f"{seconds:6.1f} s  {line}" for line, seconds in times))
    assert {p: p.stat().st_mtime if p.exists() else None for p in outputs} == before, "a command wrote outside tmp"
    assert not (tmp_path / "mlruns").exists(), "a command logged MLflow artifacts to ./mlruns of its working directory"
