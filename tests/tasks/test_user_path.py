"""The user's path: clean errors, the project's store from any folder, addressable runs, tidy tracking,
``detect``'s domain checks and CSV, and the console scripts."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from experiments.tasks.detect import detect, main as detect_main
from experiments.tasks.report import report
from experiments.tasks.list_runs import list_runs
from experiments.tasks.train import train
from experiments.tracking import resolve_tracking_uri
from tests.conftest import compose_config, make_genimage_tree
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def _run_py(args: list[str], suite_root: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environ.update({"SUITE_ROOT": str(suite_root), **env})
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=600)


# -- clean errors ---------------------------------------------------------------------------------------------
def test_a_missing_data_root_prints_the_message_alone_with_status_2(tmp_path):
    done = _run_py(["data=genimage_tiny"], tmp_path, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "data.root is not set for data=genimage_tiny" in done.stderr
    assert not list((tmp_path / "logs").glob("train/runs/*")), "the failed launch left an empty run folder"


@pytest.mark.slow
def test_hydra_full_error_still_shows_the_traceback(tmp_path):
    done = _run_py(["task=runs", "logger.experiment_name=nothing-here"], tmp_path, tmp_path, HYDRA_FULL_ERROR="1")
    assert done.returncode != 0 and "Traceback" in done.stderr and "ExperimentNotFound" in done.stderr


# -- the store from anywhere ---------------------------------------------------------------------------------
def test_a_run_from_another_folder_uses_the_project_store_and_names_it(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    done = _run_py(["task=runs", "data=demo"], project, elsewhere)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "MLflow experiment 'detectors-demo' not found in the store" in done.stderr
    assert str(project / "mlruns.db") in done.stderr
    assert not (elsewhere / "mlruns.db").exists()


def test_a_relative_store_is_the_project_s_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SUITE_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///mlruns.db") == f"sqlite:///{ROOT / 'mlruns.db'}"
    monkeypatch.setenv("SUITE_ROOT", str(tmp_path / "root"))
    assert resolve_tracking_uri("sqlite:///mlruns.db") == f"sqlite:///{tmp_path / 'root' / 'mlruns.db'}"


# -- runs are addressable, tracking is tidy -------------------------------------------------------------------
def _fake_runs(tmp_path: Path) -> tuple[mlflow.MlflowClient, dict[str, str]]:
    """Two finished training runs and one evaluate run in ``detectors-demo``, as older versions logged it."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.create_experiment("detectors-demo")
    ids = {}
    for model, auc in (("resnet34_localfft", 0.9), ("radial_angular_logreg", 0.7)):
        run = client.create_run(exp, tags={"task": "train", "model": model, "data": "demo", "seed": "42",
                                           "output_dir": str(tmp_path / "logs" / model)})
        for split in ("test",):
            for metric in ("accuracy", "f1", "precision", "recall", "auc", "ap"):
                client.log_metric(run.info.run_id, f"{split}/{metric}", auc)
        client.set_terminated(run.info.run_id, "FINISHED")
        ids[model] = run.info.run_id
    aux = client.create_run(exp, tags={"task": "evaluate", "model": "resnet34_localfft", "data": "demo",
                                       "seed": "42"})
    client.log_metric(aux.info.run_id, "test/auc", 0.1)
    client.set_terminated(aux.info.run_id, "FINISHED")
    ids["evaluate"] = aux.info.run_id
    return client, ids


def test_task_runs_lists_id_model_status_metric_and_folder(tmp_path, capsys):
    client, ids = _fake_runs(tmp_path)
    rows = list_runs(compose_config(["task=runs"], tmp_path))
    assert {r.run_id for r in rows} == set(ids.values())
    by_id = {r.run_id: r for r in rows}
    trained = by_id[ids["resnet34_localfft"]]
    assert (trained.model, trained.data, trained.status, trained.metric) == ("resnet34_localfft", "demo",
                                                                              "FINISHED", 0.9)
    assert trained.folder == str(tmp_path / "logs" / "resnet34_localfft")
    printed = capsys.readouterr().out
    assert ids["resnet34_localfft"] in printed and "resnet34_localfft" in printed
    assert "outputs:" in printed and "MLflow run" in printed


def test_report_ignores_auxiliary_runs_and_logs_into_its_own_experiment(tmp_path, capsys):
    client, ids = _fake_runs(tmp_path)
    result = report(compose_config(["task=report"], tmp_path))
    assert {r.run_id for r in result["rows"]} == {ids["resnet34_localfft"], ids["radial_angular_logreg"]}
    training = client.get_experiment_by_name("detectors-demo").experiment_id
    assert {r.data.tags["task"] for r in client.search_runs([training])} == {"train", "evaluate"}  # no report run
    reports = client.search_runs([client.get_experiment_by_name("report-detectors-demo").experiment_id])
    assert str(tmp_path) in client.get_experiment_by_name("report-detectors-demo").artifact_location  # not ./mlruns
    assert len(reports) == 1 and reports[0].data.metrics["report/resnet34_localfft/test/auc"] == pytest.approx(0.9)
    printed = capsys.readouterr().out
    assert ids["radial_angular_logreg"] in printed and str(tmp_path / "logs") in printed  # ids and folders
    assert f"MLflow run: {reports[0].info.run_id}" in printed


# -- detect knows its domain ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained64(tmp_path_factory) -> dict:
    """A tiny detector trained on 64 px images (crop 64, native resolution), once for the module."""
    tmp = tmp_path_factory.mktemp("detector64")
    tree = make_genimage_tree(tmp / "genimage", n=4, size=64)
    cfg = compose_config(TINY + [f"data.root={tree}", "data.crop_size=64", "debug=fdr", "diagnostics=false"], tmp)
    train(cfg)
    return {"run_dir": Path(cfg.paths.output_dir)}


def _inputs(folder: Path, size: int = 256, n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"big_{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "tiny.png")
    return folder


def test_training_records_its_image_sizes(trained64):
    import json

    stats = json.loads((trained64["run_dir"] / "data_stats.json").read_text())
    assert stats["split"] == "train" and stats["n_images"] > 0
    assert stats["width_median"] == stats["height_median"] == 64 and stats["crop_size"] == 64


def test_detect_warns_on_inputs_far_from_the_training_sizes(trained64, tmp_path):
    result = detect(trained64["run_dir"], _inputs(tmp_path / "in"), progress=False, views="center")
    assert len(result.rows) == 2 and all(r.tiles == 1 for r in result.rows)
    assert any("far from the training images' sizes" in w and "64x64" in w for w in result.warnings)
    assert any("--tile" in w for w in result.warnings)  # a 64 px crop sees 6% of a 256 px image
    tiled = detect(trained64["run_dir"], tmp_path / "in", progress=False, tile=True)
    assert all(r.tiles == 16 for r in tiled.rows)
    assert not any("--tile" in w for w in tiled.warnings)
    # the default, auto: a spectral detector (model.native_views) tiles an image over twice its crop
    auto = detect(trained64["run_dir"], tmp_path / "in", progress=False)
    assert [r.tiles for r in auto.rows] == [16, 16] and "views auto: grid:4" in auto.preprocess
    assert [r.p_synthetic for r in auto.rows] == pytest.approx([r.p_synthetic for r in tiled.rows])


def test_detect_csv_lists_every_file_with_its_status(trained64, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    code = detect_main([str(trained64["run_dir"]), str(_inputs(tmp_path / "in")), "--out", str(out)])
    assert code == 0
    with out.open() as handle:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(handle)}
    assert set(rows) == {"big_0.png", "big_1.png", "broken.png", "tiny.png"}
    assert rows["big_0.png"]["status"] == "scored" and rows["big_0.png"]["p_synthetic"]
    assert rows["tiny.png"]["status"] == "too small" and rows["tiny.png"]["p_synthetic"] == ""
    assert rows["broken.png"]["status"] not in ("", "scored")
    captured = capsys.readouterr()
    assert "warning:" in captured.err and f"outputs: {out}" in captured.out


# -- console scripts -----------------------------------------------------------------------------------------
def test_the_console_scripts_are_installed(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("experiments", "detectors", "features"):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (target / "bin" / "spectral-suite").is_file() and (target / "bin" / "spectral-detect").is_file()
    entry_points = next(target.glob("*.dist-info")).joinpath("entry_points.txt").read_text()
    assert "spectral-suite = experiments.tasks.cli:main" in entry_points
    assert "spectral-detect = experiments.tasks.detect:main" in entry_points
