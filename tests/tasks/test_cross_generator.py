"""The cross-generator protocols (train_on_one, leave_one_out): the presets and task=cross_generator."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from experiments.tasks.cross_generator import cross_generator
from tests.conftest import assert_source_tags, compose_config

GENS = ("a", "b", "c")


@pytest.mark.parametrize("preset", ["train_on_one"])
def test_preset_composes_one_train_generator_and_all_test_generators(preset, tmp_path):
    cfg = compose_config([f"experiment={preset}", "train_generator=nearest_conv"], tmp_path)
    assert list(cfg.data.generators) == ["nearest_conv"]
    assert list(cfg.data.test_generators) == ["deconv", "nearest_conv", "bilinear_conv"]
    assert cfg.logger.tags.protocol == "train_on_one" and cfg.logger.tags.train_generator == "nearest_conv"
    assert cfg.logger.experiment_name == "train_on_one-demo"
    assert cfg.hydra.sweeper.params.train_generator == "deconv,nearest_conv,bilinear_conv"
    task = compose_config(["task=cross_generator", f"experiment={preset}"], tmp_path)
    assert task.task.experiment_name == cfg.logger.experiment_name and task.task.protocol == "train_on_one"


def test_leave_one_out_trains_on_all_but_one_and_tests_on_it(tmp_path):
    cfg = compose_config(["experiment=leave_one_out", "held_out_generator=bilinear_conv"], tmp_path)
    assert list(cfg.data.generators) == ["deconv", "nearest_conv", "bilinear_conv"]
    assert list(cfg.data.exclude_generators) == ["bilinear_conv"]
    assert list(cfg.data.test_generators) == ["bilinear_conv"]
    assert cfg.logger.tags.protocol == "leave_one_out" and cfg.logger.tags.train_generator == "all_but_bilinear_conv"
    assert cfg.logger.experiment_name == "leave_one_out-demo"
    assert cfg.hydra.sweeper.params.held_out_generator == "deconv,nearest_conv,bilinear_conv"
    task = compose_config(["task=cross_generator", "experiment=leave_one_out"], tmp_path)
    assert task.task.protocol == "leave_one_out"


def test_leave_one_out_splits_hold_the_generator_out_of_train_and_val(tmp_path, genimage_tree):
    from experiments.training.builders import build_datamodule

    cfg = compose_config(["experiment=leave_one_out", "data=genimage_tiny", f"data.root={genimage_tree}",
                          "all_generators=[gen_a,gen_b]", "held_out_generator=gen_b", "data.crop_size=32",
                          "data.resize_size=null"], tmp_path)
    datamodule = build_datamodule(cfg)
    train, val, test = datamodule.layout.splits(datamodule.root, datamodule.selection)
    assert {s.generator for s in train + val} == {"gen_a"} and {s.generator for s in test} == {"gen_b"}


def test_task_prints_one_row_per_held_out_generator_and_a_column_per_detector(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    cfg = compose_config(["task=cross_generator", "experiment=leave_one_out"], tmp_path)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp_id = client.create_experiment("leave_one_out-demo")
    for model, shift in (("m", 0.0), ("radial_angular_logreg", 0.05)):
        for i, held_out in enumerate(GENS):
            run = client.create_run(exp_id, tags={"task": "train", "protocol": "leave_one_out", "model": model,
                                                  "train_generator": f"all_but_{held_out}", "seed": "42"})
            auc = 0.6 + 0.1 * i + shift
            for key, value in (("auc", auc), ("auc_ci_low", auc - 0.05), ("auc_ci_high", auc + 0.05)):
                client.log_metric(run.info.run_id, f"test/{held_out}/{key}", value)
            client.log_metric(run.info.run_id, f"test/{held_out}/accuracy", auc - 0.1)
            client.set_terminated(run.info.run_id, "FINISHED")
    other = client.create_run(exp_id, tags={"task": "train", "protocol": "train_on_one", "model": "m",
                                            "train_generator": "a", "seed": "42"})
    client.log_metric(other.info.run_id, "test/b/auc", 0.0)
    client.set_terminated(other.info.run_id, "FINISHED")
    result = cross_generator(cfg)
    values, low, high, generators, models = result["held_out"]["auc"]
    assert generators == list(GENS) and models == ["m", "radial_angular_logreg"]
    np.testing.assert_allclose(values, [[0.6, 0.65], [0.7, 0.75], [0.8, 0.85]])
    np.testing.assert_allclose(low, values - 0.05)
    assert result["summary"][("m", "auc")] == pytest.approx({"held_out_mean": 0.7, "held_out_min": 0.6})
    assert result["summary"][("radial_angular_logreg", "accuracy")]["held_out_mean"] == pytest.approx(0.65)
    assert result["matrices"] == {}  # no N x N matrix of n/a cells
    logged = client.get_run(result["run_id"])
    assert logged.data.tags["protocol"] == "leave_one_out"
    assert logged.data.metrics["cross_generator/m/auc/held_out_mean"] == pytest.approx(0.7)
    out = tmp_path / "reports" / "cross_generator"
    header, first = (out / "held_out_auc.csv").read_text().splitlines()[:2]
    assert header == ("held_out,m,m_ci_low,m_ci_high,radial_angular_logreg,radial_angular_logreg_ci_low,"
                      "radial_angular_logreg_ci_high")
    assert first.split(",")[0] == "a" and [float(v) for v in first.split(",")[1:]] == pytest.approx(
        [0.6, 0.55, 0.65, 0.65, 0.6, 0.7])
    assert (out / "summary.csv").read_text().splitlines()[0] == "model,metric,held_out_mean,held_out_min"
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert "n/a" not in printed and "nan" not in printed and "diagonal" not in printed and "…" not in printed
    assert all(len(line) <= 80 for line in lines if "│" in line)
    row = next(line for line in lines if line.startswith("│ b "))  # one row per held-out generator
    assert "0.7000 [0.650, 0.750]" in row and "0.7500 [0.700, 0.800]" in row
    assert any(line.startswith("│ m ") and "auc" in line and "0.7000" in line and "0.6000" in line for line in lines)


def test_task_reads_train_on_one_runs_from_mlflow(tmp_path):
    overrides = ["task=cross_generator", "experiment=train_on_one", "+logger.tags.note=matrices"]
    cfg = compose_config(overrides, tmp_path)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp_id = client.create_experiment(cfg.task.experiment_name)
    for i, train in enumerate(GENS):
        for model, shift in (("m1", 0.0), ("m2", -0.2)):
            run = client.create_run(exp_id, tags={"task": "train", "protocol": "train_on_one", "model": model,
                                                  "train_generator": train, "seed": "42"})
            for j, test in enumerate(GENS):
                auc = (0.9 if i == j else 0.5 + 0.1 * i + 0.01 * j) + shift
                client.log_metric(run.info.run_id, f"test/{test}/auc", auc)
                client.log_metric(run.info.run_id, f"test/{test}/accuracy", auc - 0.1)
                client.log_metric(run.info.run_id, f"test/{test}/auc_ci_low", auc - 0.05)
                client.log_metric(run.info.run_id, f"test/{test}/auc_ci_high", auc + 0.05)
            client.set_terminated(run.info.run_id, "FINISHED")
    # an unfinished run, a run of another protocol and a run tagged with a former protocol name are ignored
    legacy = client.create_run(exp_id, tags={"task": "train", "protocol": "logo", "model": "m1",
                                             "train_generator": "a", "seed": "7"})
    client.log_metric(legacy.info.run_id, "test/a/auc", 0.0)
    client.set_terminated(legacy.info.run_id, "FINISHED")
    stray = client.create_run(exp_id, tags={"task": "train", "protocol": "train_on_one", "model": "m1", "train_generator": "a",
                                            "seed": "42"})
    client.log_metric(stray.info.run_id, "test/a/auc", 0.0)
    other = client.create_run(exp_id, tags={"task": "train", "model": "m1", "seed": "42"})
    client.log_metric(other.info.run_id, "test/a/auc", 0.0)
    client.set_terminated(other.info.run_id, "FINISHED")

    result = cross_generator(cfg)
    matrix, rows, cols = result["matrices"][("m1", "auc")]
    assert rows == list(GENS) and matrix[0, 1] == pytest.approx(0.51)
    off = np.mean([0.5 + 0.1 * i + 0.01 * j for i in range(3) for j in range(3) if i != j])
    assert result["summary"][("m1", "auc")] == pytest.approx({"diagonal_mean": 0.9, "off_diagonal_mean": off,
                                                              "off_diagonal_min": 0.51})
    assert result["summary"][("m2", "accuracy")]["diagonal_mean"] == pytest.approx(0.6)
    out = tmp_path / "reports" / "cross_generator"
    for stem in ("m1_auc", "m1_accuracy", "m2_auc", "m2_accuracy"):
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert (out / f"{stem}.csv").read_text().startswith("train \\ test,a,b,c")
    cells = (out / "cells.csv").read_text().splitlines()
    assert cells[0] == "model,metric,train,test,value,ci_low,ci_high" and len(cells) == 1 + 4 * 9
    row = next(line.split(",") for line in cells if line.startswith("m1,auc,a,b,"))
    assert [float(v) for v in row[4:]] == pytest.approx([0.51, 0.46, 0.56])
    assert next(line for line in cells if line.startswith("m1,accuracy,a,b,")).endswith(",nan,nan")
    logged = client.get_run(result["run_id"])
    assert logged.data.tags["task"] == "cross_generator"
    assert logged.data.metrics["cross_generator/m1/auc/off_diagonal_mean"] == pytest.approx(off)
    assert client.get_experiment(logged.info.experiment_id).name == f"cross_generator-{cfg.task.experiment_name}"
    assert_source_tags(client, result["run_id"], overrides, {"note": "matrices", "protocol": "train_on_one"})
    assert {a.path for a in client.list_artifacts(result["run_id"], "cross_generator")} >= {
        "cross_generator/m1_auc.png", "cross_generator/summary.csv"}


def test_task_prints_one_row_per_chronological_window_and_a_column_per_detector(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    cfg = compose_config(["task=cross_generator", "experiment=chronological"], tmp_path)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp_id = client.create_experiment("chronological-demo")
    order = ("a", "b", "c", "d")
    for model, shift in (("m", 0.0), ("npr", 0.05)):
        for k in (1, 2):
            run = client.create_run(exp_id, tags={"task": "train", "protocol": "chronological", "model": model,
                                                  "train_generator": f"upto_{order[k - 1]}", "seed": "42",
                                                  "generator_order": ",".join(order), "chronological_k": str(k)})
            for j, test in enumerate(order[k:]):  # the score falls with the distance in release order
                auc = 0.9 - 0.1 * j + shift
                for key, value in (("auc", auc), ("auc_ci_low", auc - 0.05), ("auc_ci_high", auc + 0.05)):
                    client.log_metric(run.info.run_id, f"test/{test}/{key}", value)
                client.log_metric(run.info.run_id, f"test/{test}/accuracy", auc - 0.1)
            client.set_terminated(run.info.run_id, "FINISHED")
    untagged = client.create_run(exp_id, tags={"task": "train", "protocol": "chronological", "model": "m",
                                               "train_generator": "upto_c", "seed": "42"})  # no order: ignored
    client.log_metric(untagged.info.run_id, "test/d/auc", 0.0)
    client.set_terminated(untagged.info.run_id, "FINISHED")
    result = cross_generator(cfg)
    values, low, high, rows, models = result["chronological"]["auc"]
    assert rows == [("upto_a", "b"), ("upto_a", "c"), ("upto_a", "d"), ("upto_b", "c"), ("upto_b", "d")]
    assert models == ["m", "npr"]
    np.testing.assert_allclose(values[:, 0], [0.9, 0.8, 0.7, 0.9, 0.8])
    np.testing.assert_allclose(high - values, 0.05)
    assert result["summary"][("m", "auc")] == pytest.approx(
        {"window_mean": 0.82, "window_min": 0.7, "next_window_mean": 0.9})
    assert result["held_out"] == {} and result["matrices"] == {}
    out = tmp_path / "reports" / "cross_generator"
    lines = (out / "chronological_auc.csv").read_text().splitlines()
    assert lines[0].startswith("trained_up_to,window,m,m_ci_low,m_ci_high,npr") and len(lines) == 6
    assert lines[1].split(",")[:3] == ["a", "b", "0.9"]
    printed = capsys.readouterr().out
    assert "n/a" not in printed and "nan" not in printed
    row = next(line for line in printed.splitlines() if line.startswith("│ b ") and "│ d " in line)
    assert "0.8000 [0.750, 0.850]" in row and "0.8500 [0.800, 0.900]" in row
    assert client.get_run(result["run_id"]).data.metrics["cross_generator/npr/auc/window_min"] == pytest.approx(0.75)

