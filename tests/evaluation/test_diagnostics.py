"""Diagnostics after training, per-stream Grad-CAM, and ``task=evaluate`` on tiny 32 px detectors."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from experiments.training.builders import build_datamodule, diagnostics_settings
from experiments.inference.loading import LoadedDetector
from experiments.evaluation.diagnostics import gradcam_for_rows, gradcam_rows, write_diagnostics
from experiments.inference.scoring import score_split
from experiments.tasks.evaluate import MissingCheckpoint, evaluate
from experiments.evaluation.gradcam import stream_cams
from experiments.tasks.train import train
from tests.conftest import assert_source_tags, compose_config, make_genimage_tree
from tests.conftest import TINY

PLOTS = {"confusion_matrix", "calibration", "roc", "per_generator_accuracy", "tsne", "gradcam"}
STRICT = "+diagnostics_strict=true"


def _store(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlruns.db'}"


def _only_run(uri: str, experiment: str = "detectors-genimage_tiny", task: str = "train"):
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.task = '{task}'")
    assert len(runs) == 1, [r.data.tags for r in runs]
    return client, runs[0]


def _assert_real_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert min(pixels.shape[:2]) > 50 and pixels.std() > 1.0, f"{path.name} looks blank"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_genimage_tree(tmp_path_factory.mktemp("data") / "genimage", n=4)


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory) -> dict:
    """A tiny LocalFFT-ResNet trained for one full epoch (every test image scored), diagnostics strict."""
    tmp = tmp_path_factory.mktemp("train")
    cfg = compose_config(TINY + [f"data.root={tree}", "debug=cpu", "trainer.max_epochs=1", STRICT,
                                 "eval.abstain=coverage@0.9"], tmp)
    train(cfg)
    client, run = _only_run(_store(tmp))
    out = Path(cfg.paths.output_dir)
    return {"run_dir": out, "uri": _store(tmp), "run_id": run.info.run_id, "client": client,
            "metrics": json.loads((out / "metrics.json").read_text())}


def test_training_writes_and_logs_every_plot(trained):
    for name in PLOTS:
        _assert_real_png(trained["run_dir"] / "plots" / f"{name}.png")
    logged = {Path(a.path).name for a in trained["client"].list_artifacts(trained["run_id"], "plots")}
    assert logged == {f"{name}.png" for name in PLOTS}
    root = {a.path for a in trained["client"].list_artifacts(trained["run_id"])}
    assert {"metrics_by_generator.csv", "metrics_by_generator.json"} <= root


def test_metrics_by_generator_agree_with_the_flat_metrics(trained):
    table = json.loads((trained["run_dir"] / "metrics_by_generator.json").read_text())
    assert set(table) == {"all", "gen_a", "gen_b"}
    for gen in ("gen_a", "gen_b"):
        assert table[gen]["auc"] == pytest.approx(trained["metrics"][f"test/{gen}/auc"], abs=1e-12)
        assert table[gen]["n"] == 8  # 4 real + 4 fake test images per generator
    csv_lines = (trained["run_dir"] / "metrics_by_generator.csv").read_text().splitlines()
    assert csv_lines[0].startswith("generator,") and [line.split(",")[0] for line in csv_lines[1:]] == list(table)


def test_a_failing_plot_warns_and_the_others_are_still_written(trained, tree, tmp_path, monkeypatch, caplog):
    import experiments.evaluation.diagnostics as diag

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(diag, "plot_calibration", broken)
    cfg = compose_config(TINY + [f"data.root={tree}", "+gradcam_images=1"], tmp_path)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    loaded = LoadedDetector(_localfft(cfg), cfg, Path("unused"))
    test = score_split(loaded, datamodule.test_dataloader(), datamodule.generator_names)
    with caplog.at_level("WARNING"):
        written = write_diagnostics(loaded.kind, loaded.model, datamodule, test, tmp_path / "diag", None,
                                    diagnostics_settings(cfg))
    names = {p.name for p in written}
    assert "calibration.png" not in names and {"roc.png", "tsne.png", "gradcam.png"} <= names
    assert "calibration failed" in caplog.text and "no display" in caplog.text
    with pytest.raises(RuntimeError, match="no display"):
        write_diagnostics(loaded.kind, loaded.model, datamodule, test, tmp_path / "strict", None,
                          replace(diagnostics_settings(cfg), strict=True))


def _localfft(cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    return instantiate(cfg.model.net).eval()


# ---------------------------------------------------------------------------
# SPECTRAFORGE: one Grad-CAM per stream
# ---------------------------------------------------------------------------
def test_spectraforge_gradcam_has_both_streams(tree, tmp_path):
    cfg = compose_config(TINY[:-1] + [f"data.root={tree}", "model=spectraforge_dual", "model.net.head_hidden=16",
                                      "data.crop_size=64", "data.resize_size=64",
                                      "+gradcam_images=2"], tmp_path)
    torch.manual_seed(0)
    model = instantiate(cfg.model.net).eval()
    images = torch.rand(3, 3, 64, 64)
    cams = stream_cams(model, images, target_classes=[1, 0, 1])
    assert set(cams) == {"spatial", "frequency"}
    for cam in cams.values():
        assert cam.shape == (3, 64, 64) and cam.dtype == np.float32
        assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert any(cam.max() > 0.5 for cam in cams.values())  # min-max scaled maps, not all blank
    assert not any(p.grad is not None for p in model.parameters())  # gradients are not left behind

    datamodule = build_datamodule(cfg)
    datamodule.setup()
    loaded = LoadedDetector(model, cfg, Path("unused"))
    test = score_split(loaded, datamodule.test_dataloader(), datamodule.generator_names)
    rows = gradcam_rows(test, per_class=2)
    assert test.label[rows].tolist() == [0, 0, 1, 1]
    shown, cams, titles = gradcam_for_rows(model, datamodule.datasets["test"], test, rows)
    assert shown.shape == (4, 3, 64, 64) and set(cams) == {"spatial", "frequency"}
    assert [t.split(" | ")[0] for t in titles] == ["real", "real", "synthetic", "synthetic"]
    written = write_diagnostics(loaded.kind, model, datamodule, test, tmp_path / "run", None,
                                replace(diagnostics_settings(cfg), strict=True))
    _assert_real_png(tmp_path / "run" / "plots" / "gradcam.png")
    assert {p.stem for p in written if p.suffix == ".png"} == PLOTS


def test_sklearn_detector_gets_tsne_of_scaled_features_and_no_gradcam(tree, tmp_path):
    cfg = compose_config(["data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.batch_size=8",
                          "data.num_workers=0", f"data.root={tree}", "model=radial_angular_logreg",
                          "model.estimator.features.n_radial=8", "model.estimator.features.n_angular=8", STRICT], tmp_path)
    train(cfg)
    out = Path(cfg.paths.output_dir) / "plots"
    assert {p.stem for p in out.glob("*.png")} == PLOTS - {"gradcam"}
    _assert_real_png(out / "tsne.png")


# ---------------------------------------------------------------------------
# task=evaluate
# ---------------------------------------------------------------------------
def test_evaluate_run_folder_reproduces_the_training_metrics(trained, tree, tmp_path):
    overrides = TINY + [f"data.root={tree}", "task=evaluate", f"ckpt={trained['run_dir']}", "debug=cpu", STRICT,
                        "+logger.tags.note=scored"]
    cfg = compose_config(overrides, tmp_path)
    metrics = evaluate(cfg)
    for key in ("test/auc", "test/gen_a/auc", "test/gen_b/auc", "test/accuracy", "best_val/auc",
                # the training run's operating point and abstention band, applied unchanged
                "op/threshold", "op/abstain_low", "test/tpr_at_op", "test/fpr_at_op", "test/gen_b/tpr_at_op",
                "test/tpr_at_op_ci_low", "test/coverage", "test/selective_accuracy_ci_high"):
        assert metrics[key] == pytest.approx(trained["metrics"][key], abs=1e-6), key
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "metrics.json").read_text())["test/auc"] == pytest.approx(metrics["test/auc"])
    for name in PLOTS:
        _assert_real_png(out / "plots" / f"{name}.png")
    client, run = _only_run(_store(tmp_path), "evaluate-detectors-genimage_tiny", task="evaluate")
    assert run.data.tags["evaluated_run"] == str(trained["run_dir"])
    assert_source_tags(client, run.info.run_id, overrides, {"note": "scored", "task": "evaluate"})
    assert run.data.tags["model"] == "resnet34_localfft" and run.info.status == "FINISHED"
    assert run.data.metrics["test/auc"] == pytest.approx(metrics["test/auc"])
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")} == {f"{p}.png" for p in PLOTS}
    assert 0.0 <= metrics["test/source/gen_a/fpr_at_op"] <= 1.0  # the real sources at the operating point
    assert (out / "real_sources" / "source_generator_auc.csv").is_file()


def test_evaluate_by_run_id_uses_the_detectors_sizes_on_other_data(trained, tmp_path):
    other = make_genimage_tree(tmp_path / "other", generators=("gen_c",), n=3, size=48, seed=1)
    cfg = compose_config(TINY + [f"data.root={other}", "data.crop_size=40", "task=evaluate",
                                 f"ckpt={trained['run_id']}", f"logger.tracking_uri={trained['uri']}",
                                 "diagnostics=false"], tmp_path)
    metrics = evaluate(cfg)
    assert "test/gen_c/auc" in metrics and "test/gen_a/auc" not in metrics
    saved = (Path(cfg.paths.output_dir) / "config.yaml").read_text()
    assert "crop_size: 32" in saved  # the detector's own crop, not data.crop_size=40
    client = mlflow.MlflowClient(tracking_uri=trained["uri"])
    runs = client.search_runs([client.get_experiment_by_name("evaluate-detectors-genimage_tiny").experiment_id],
                              filter_string="tags.task = 'evaluate'")
    assert [r.data.tags["evaluated_run"] for r in runs] == [trained["run_id"]]


def test_evaluate_scores_views_and_records_them(trained, tmp_path):
    """eval.views=auto tiles this spectral detector's 80 px images (over twice its 32 px crop) as a 4 x 4 grid;
    eval.views=center scores one crop; the views and the pooling are tags of the run."""
    big = make_genimage_tree(tmp_path / "big", generators=("gen_c",), n=3, size=80, seed=2)
    base = TINY + [f"data.root={big}", "task=evaluate", f"ckpt={trained['run_dir']}", "diagnostics=false",
                   "stats.bootstrap_resamples=0"]
    auto = evaluate(compose_config(base, tmp_path / "auto"))
    center = evaluate(compose_config(base + ["eval.views=center", "eval.pooling=max"], tmp_path / "center"))
    assert "test/auc" in auto and "test/auc" in center
    _, run = _only_run(_store(tmp_path / "auto"), "evaluate-detectors-genimage_tiny", task="evaluate")
    assert run.data.metrics["views/test_per_image"] == 16 and run.data.metrics["views/val_per_image"] == 16
    assert run.data.tags["views"] == "auto" and run.data.tags["pooling"] == "mean"
    assert run.data.tags["views_used"].startswith("auto: grid:4")
    _, run = _only_run(_store(tmp_path / "center"), "evaluate-detectors-genimage_tiny", task="evaluate")
    assert run.data.metrics["views/test_per_image"] == 1
    assert (run.data.tags["views"], run.data.tags["pooling"]) == ("center", "max")


def test_training_stores_the_val_calibration_beside_the_weights(trained):
    stored = json.loads((trained["run_dir"] / "calibration.json").read_text())
    assert stored["fitted_on"] == "val" and stored["calibrator"]["kind"] == "temperature"
    assert stored["threshold"] == pytest.approx(trained["metrics"]["threshold/val_calibrated"])
    for key in ("test/ece", "test/brier", "test/ece_calibrated", "test/brier_calibrated", "calibration/temperature",
                "test/vs_all_reals/gen_a/auc", "test/gen_a/auc"):
        assert key in trained["metrics"], key
    root = {a.path for a in trained["client"].list_artifacts(trained["run_id"])}
    assert {"calibration.json", "metrics_by_generator_vs_all_reals.csv"} <= root


def test_training_fits_the_abstention_band_on_val_for_its_coverage(trained):
    stored = json.loads((trained["run_dir"] / "calibration.json").read_text())
    band, op = stored["abstention"], stored["operating_point"]
    assert band["spec"] == "coverage@0.9" and band["fitted_on"] == "val"
    assert band["low"] <= op["threshold"] <= band["high"]
    with (trained["run_dir"] / "predictions_val.csv").open() as handle:
        val = np.array([float(r["prob"]) for r in csv.DictReader(handle)])
    answered = (val < band["low"]) | (val > band["high"])
    assert abs(answered.mean() - 0.9) <= 1.0 / val.size  # the quantile of |p - t| on this val split
    m = trained["metrics"]
    assert m["op/abstain_low"] == band["low"] and 0.0 <= m["test/coverage"] <= 1.0
    assert m["test/coverage_ci_low"] <= m["test/coverage"] <= m["test/coverage_ci_high"]


def test_evaluate_without_a_stored_operating_point_warns_and_skips_its_metrics(trained, caplog):
    from experiments.evaluation.predictions import BootstrapSettings, Predictions
    from experiments.tasks.evaluate import stored_operating_point_metrics

    test = Predictions(np.array([0.2, 0.9]), np.array([0, 1]), np.array([0, 0]), np.arange(2), ["gen_a"])
    record = json.loads((trained["run_dir"] / "calibration.json").read_text())
    old = {k: v for k, v in record.items() if k not in ("operating_point", "abstention")}
    detector = LoadedDetector(None, {}, Path("old_run"), calibration=old)
    with caplog.at_level("WARNING"):
        assert stored_operating_point_metrics(detector, test, BootstrapSettings(50)) == {}
    assert "stored no operating point" in caplog.text
    stored = LoadedDetector(None, {}, Path("run"), calibration=record)
    metrics = stored_operating_point_metrics(stored, test)
    assert metrics["op/threshold"] == record["operating_point"]["threshold"]
    assert metrics["op/abstain_low"] == record["abstention"]["low"]


def test_evaluate_on_other_data_keeps_the_training_threshold_and_calibrator(trained, tmp_path):
    """By run id (calibration.json comes from MLflow): the training run's threshold and temperature are used on
    the other dataset; task.recalibrate_on_target=true adds the target-fitted figures under their own names."""
    other = make_genimage_tree(tmp_path / "other", generators=("gen_c",), n=3, size=48, seed=1)
    base = TINY + [f"data.root={other}", "task=evaluate", f"ckpt={trained['run_id']}",
                   f"logger.tracking_uri={trained['uri']}"]
    metrics = evaluate(compose_config(base + ["diagnostics=false"], tmp_path))
    stored = json.loads((trained["run_dir"] / "calibration.json").read_text())
    assert metrics["threshold/val_calibrated"] == pytest.approx(trained["metrics"]["threshold/val_calibrated"])
    assert metrics["calibration/temperature"] == pytest.approx(stored["calibrator"]["temperature"])
    assert not any(key.endswith("target_calibrated") for key in metrics)

    cfg = compose_config(base + ["task.recalibrate_on_target=true", STRICT], tmp_path / "recalibrated")
    recalibrated = evaluate(cfg)
    assert recalibrated["threshold/val_calibrated"] == metrics["threshold/val_calibrated"]
    for key in ("threshold/val_target_calibrated", "test/accuracy_at_val_threshold_target_calibrated",
                "test/ece_target_calibrated", "test/brier_target_calibrated"):
        assert key in recalibrated, key
    _assert_real_png(Path(cfg.paths.output_dir) / "plots" / "calibration_target_calibrated.png")


def test_evaluate_without_ckpt_names_the_option(tmp_path):
    cfg = compose_config(["task=evaluate"], tmp_path)
    with pytest.raises(MissingCheckpoint, match=r"ckpt=<MLflow run id \| run folder \| weights file>"):
        evaluate(cfg)
