"""The suite installs as a wheel and runs from any folder: configs inside the package, outputs in the working
directory (never in site-packages).

The wheel is built from a copy of what it ships (no build isolation, no index: setuptools comes from the test's
environment) and installed with ``--no-deps`` into a fresh venv that sees this environment's third-party
packages through a ``.pth`` file, but not the checkout; the command then runs from an empty folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what the wheel is built from (pyproject.toml's packages, readme and license)
SHIPPED = ("pyproject.toml", "README.md", "LICENSE", "conf", "detectors", "features", "experiments", "hydra_plugins")
#: the demo set, as small as it builds: one generator, 6 images per class, 32 px
TINY_DEMO = ["data.demo.per_class=6", "data.demo.size=32", "+data.demo.generators=[deconv]", "data.crop_size=32"]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def build_wheel(tmp: Path) -> Path:
    source = tmp / "source"
    source.mkdir()
    for name in SHIPPED:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                             if (ROOT / name).is_dir() else {}))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", str(tmp / "dist"), str(source)], tmp, os.environ.copy())
    (wheel,) = (tmp / "dist").glob("spectral_detector_suite-*.whl")
    return wheel


def fresh_venv(tmp: Path, wheel: Path) -> tuple[Path, Path]:
    """A venv with the wheel installed (no dependencies) that finds this environment's packages; its bin and
    site-packages."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, os.environ.copy())
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                    os.environ.copy()).stdout.strip())
    (site / "suite-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
         str(wheel)], tmp, os.environ.copy())
    return venv / "bin", site


def installed_files(site: Path) -> set[Path]:
    """The files under ``site``, byte code left out (Python writes it on import)."""
    return {p.relative_to(site) for p in site.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_the_installed_wheel_runs_from_an_empty_folder_and_writes_there(tmp_path):
    start = time.perf_counter()
    bin_dir, site = fresh_venv(tmp_path, build_wheel(tmp_path))
    shipped = installed_files(site)
    assert {"conf", "detectors", "features", "experiments", "hydra_plugins"} <= {p.name for p in site.iterdir()}
    assert (site / "conf" / "config.yaml").is_file() and (site / "conf" / "hydra" / "sweeper").is_dir()
    (license_file,) = site.glob("spectral_detector_suite-*.dist-info/licenses/LICENSE")
    assert "MIT License" in license_file.read_text()
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"SUITE_ROOT", "PYTHONPATH"}}
    where = run([str(bin_dir / "python"), "-c", "import conf, experiments, hydra_plugins.suite_optuna_sweeper as s; "
                 "print(conf.__file__); print(experiments.__file__); print(s.__file__)"], work, env).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # the wheel's code, not the checkout's

    shown = run([str(bin_dir / "spectral-suite"), "--help"], work, env).stdout
    assert "spectral-suite" in shown and "check_data" in shown and "hparams_search" in shown
    plugins = run([str(bin_dir / "spectral-suite"), "--info", "plugins"], work, env).stdout
    assert "OptunaStudySweeper" in plugins  # the wheel's hydra_plugins are found
    run([str(bin_dir / "spectral-suite"), "task=check_data", "experiment=demo", *TINY_DEMO], work, env)

    assert (work / "data" / "demo" / "MANIFEST.json").is_file()  # built on first use, in the working directory
    reports = list((work / "logs" / "check_data" / "runs").glob("*_demo/data_report.json"))
    assert len(reports) == 1
    assert installed_files(site) == shipped  # nothing written into site-packages
    print(f"wheel built, installed and run from an empty folder: {time.perf_counter() - start:.1f} s")


def test_project_root_is_suite_root_else_the_checkout_else_the_working_directory(tmp_path, monkeypatch):
    from experiments import process

    monkeypatch.delenv("SUITE_ROOT", raising=False)
    assert process.project_root() == ROOT  # a checkout: run.py beside experiments/
    installed = tmp_path / "site-packages" / "experiments"
    installed.mkdir(parents=True)
    monkeypatch.setattr(process, "__file__", str(installed / "process.py"))
    monkeypatch.chdir(tmp_path)
    assert process.project_root() == tmp_path.resolve()  # an installed package: the working directory
    monkeypatch.setenv("SUITE_ROOT", str(tmp_path / "elsewhere"))
    assert process.project_root() == (tmp_path / "elsewhere").resolve()


def test_the_configs_are_the_conf_package():
    from experiments import process
    from experiments.tasks.cli import CONF_DIR

    assert CONF_DIR == "pkg://conf" and process.conf_dir() == ROOT / "conf"
    assert (process.conf_dir() / "config.yaml").is_file()
