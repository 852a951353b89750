"""``python -m experiments.tasks.detect``: scoring a messy folder with a tiny trained detector."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from experiments.inference.loading import LoadedDetector, load_detector
from experiments.data.images import load_rgb
from experiments.data.transforms import Preprocess
from experiments.tasks.detect import CSV_COLUMNS, DetectError, detect, main
from experiments.tasks.train import train
from tests.conftest import compose_config, make_genimage_tree
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
GOOD = ("gray.png", "rgba.png", "deep16.png", "palette.png", "photo.jpg", "nested/photo.webp")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny detector (32 px crop, no resize) trained once for the module: its run folder, run id and store."""
    tmp = tmp_path_factory.mktemp("detector")
    tree = make_genimage_tree(tmp / "genimage", n=4)
    cfg = compose_config(TINY + [f"data.root={tree}", "debug=fdr"], tmp)
    train(cfg)
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])[0]
    return {"run_dir": Path(cfg.paths.output_dir), "run_id": run.info.run_id, "uri": uri,
            "val_threshold": run.data.metrics["threshold/val_calibrated"]}


def _rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """Good images of every awkward kind, plus a corrupt, an empty, a tiny and an outside-symlinked file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(_rgb(rng, 40, 48)[..., 0], mode="L").save(folder / "gray.png")
    Image.fromarray(np.dstack([_rgb(rng, 36, 36), np.full((36, 36), 128, np.uint8)]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(folder / "deep16.png")
    Image.fromarray(_rgb(rng, 48, 40)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(_rgb(rng, 64, 64)).save(folder / "photo.jpg", quality=90)
    Image.fromarray(_rgb(rng, 33, 50)).save(folder / "nested" / "photo.webp")
    Image.fromarray(_rgb(rng, 8, 8)).save(folder / "tiny.png")
    buf = io.BytesIO()
    Image.fromarray(_rgb(rng, 64, 64)).save(buf, "JPEG")
    (folder / "corrupt.jpg").write_bytes(buf.getvalue()[:200])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not scored")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(_rgb(rng, 40, 40)).save(outside / "outside.png")
    (folder / "link.png").symlink_to(outside / "outside.png")
    return folder


def _rel(path: str, folder: Path) -> str:
    return Path(path).relative_to(folder).as_posix()


def test_messy_folder_scores_good_images_and_reports_the_rest(trained, messy_folder, capsys):
    result = detect(trained["run_dir"], messy_folder, batch_size=4, progress=False)
    assert sorted(_rel(r.path, messy_folder) for r in result.rows) == sorted(GOOD)
    assert all(0.0 <= r.p_synthetic <= 1.0 for r in result.rows)
    # the default threshold is the run's val threshold (on the calibrated P(synthetic) it prints)
    assert all(r.label == ("synthetic" if r.p_synthetic >= result.threshold else "real") for r in result.rows)
    reasons = {_rel(s.path, messy_folder): s.reason for s in result.skipped}
    assert reasons["tiny.png"] == "too small"
    assert reasons["link.png"] == "symlink outside folder"
    assert reasons["empty.png"] == "empty file"
    assert reasons["corrupt.jpg"] in ("truncated", "decode error", "not an image")
    assert set(reasons) == {"tiny.png", "link.png", "empty.png", "corrupt.jpg"}
    assert result.ignored == 1  # notes.txt


def test_probabilities_equal_the_detectors_own_predict_proba(trained, messy_folder, monkeypatch):
    calls = []
    original = LoadedDetector.predict_proba

    def counting(self, images):
        calls.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(LoadedDetector, "predict_proba", counting)
    result = detect(trained["run_dir"], messy_folder, batch_size=4, progress=False)
    assert calls == [4, 2]  # batched, never one forward per image

    det = load_detector(trained["run_dir"])
    pre = Preprocess(det.cfg.data.crop_size, det.cfg.data.resize_size)
    paths = [Path(r.path) for r in result.rows]
    raw = original(det, torch.stack([pre(load_rgb(p)) for p in paths]))
    # calibrated by default: the training run's val-fitted temperature is applied to the raw P(synthetic)
    expected = torch.from_numpy(det.calibrate(raw.double().numpy())).float()
    got = torch.tensor([r.p_synthetic for r in result.rows])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert result.probability.startswith("calibrated (temperature scaling")
    plain = detect(trained["run_dir"], messy_folder, batch_size=4, progress=False, calibrated=False)
    torch.testing.assert_close(torch.tensor([r.p_synthetic for r in plain.rows]), raw, atol=1e-5, rtol=0)
    assert plain.probability == "raw (--raw)"
    # the default threshold is the run's operating point, on the scale of the printed P(synthetic)
    assert result.threshold == pytest.approx(float(det.calibrate([det.operating_threshold])[0]))
    assert plain.threshold == pytest.approx(det.operating_threshold)
    assert plain.val_threshold == pytest.approx(det.calibration["threshold"]) == pytest.approx(trained["val_threshold"])
    assert result.val_threshold == pytest.approx(det.calibration["threshold_calibrated"])


def test_cli_prints_rows_summary_and_writes_csv(trained, messy_folder, tmp_path, capsys):
    out = tmp_path / "res" / "results.csv"
    code = main([str(trained["run_dir"]), str(messy_folder), "--out", str(out), "--threshold", "0.3",
                 "--batch-size", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    # training writes calibration.json beside the weights: its val-calibrated threshold is reported (on the
    # calibrated P(synthetic) that is printed), 0.3 is used
    stored = json.loads((trained["run_dir"] / "calibration.json").read_text())
    assert f"val-calibrated threshold: {stored['threshold_calibrated']:.4f}" in printed
    assert "P(synthetic): calibrated (temperature scaling" in printed
    assert re.search(r"skipped by reason: .*too small: 1", printed)
    for name, reason in (("tiny.png", "too small"), ("link.png", "symlink outside folder"), ("corrupt.jpg", "")):
        assert re.search(rf"skipped \S*{re.escape(name)}: {reason}", printed), name
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len([r for r in rows if r["status"] == "scored"]) == len(GOOD)
    for row in (r for r in rows if r["status"] == "scored"):
        p = float(row["p_synthetic"])
        assert 0.0 <= p <= 1.0 and float(row["threshold"]) == 0.3
        assert row["label"] == ("synthetic" if p >= 0.3 else "real")
        assert row["path"] in printed


def test_follow_symlinks_and_no_recursive(trained, messy_folder):
    followed = detect(trained["run_dir"], messy_folder, follow_symlinks=True, progress=False)
    assert "link.png" in {Path(r.path).name for r in followed.rows}
    flat = detect(trained["run_dir"], messy_folder, recursive=False, progress=False)
    assert "photo.webp" not in {Path(r.path).name for r in flat.rows}


def test_val_threshold_from_mlflow_run_id(trained, messy_folder, capsys):
    result = detect(trained["run_id"], messy_folder, threshold="val", tracking_uri=trained["uri"], progress=False,
                    calibrated=False)
    assert result.threshold == pytest.approx(trained["val_threshold"])
    assert main([trained["run_id"], str(messy_folder), "--tracking-uri", trained["uri"], "--threshold", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "val-calibrated threshold: " in printed and "--threshold val" in printed
    assert "threshold: 0.5 " in printed
    # by default the run's own operating point travels with it (calibration.json, downloaded from the MLflow run)
    default = detect(trained["run_id"], messy_folder, tracking_uri=trained["uri"], progress=False)
    assert default.threshold == pytest.approx(default.op_threshold) and default.probability.startswith("calibrated")


def test_loading_by_run_id_keeps_one_copy_of_the_artifacts(trained, monkeypatch, tmp_path):
    """Artifacts of a run go to one folder per run under the user cache, not to a new temporary folder per load."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real_mkdtemp(*a, **k)) or made[-1])
    first = load_detector(trained["run_id"], trained["uri"])
    second = load_detector(trained["run_id"], trained["uri"])
    folder = tmp_path / "xdg" / "spectral-detector-suite" / "mlflow-artifacts" / trained["run_id"]
    assert first.source.parent == second.source.parent == folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.yaml", first.source.name, "calibration.json"])
    assert made == []  # no temporary download folders left behind


def test_a_run_without_calibration_json_gets_0_5_and_says_so(trained, messy_folder, tmp_path, capsys):
    run_dir = shutil.copytree(trained["run_dir"], tmp_path / "run")
    (run_dir / "calibration.json").unlink()  # a run saved without its calibration
    (run_dir / "metrics.json").write_text(json.dumps({"threshold/val_calibrated": 0.42}))  # not read: no fallback
    weights = next(run_dir.glob("*.pth"))
    assert main([str(weights), str(messy_folder / "photo.jpg"), "--threshold", "val"]) == 2
    assert "no validation-calibrated threshold" in capsys.readouterr().err
    result = detect(weights, messy_folder / "photo.jpg", progress=False)
    assert result.threshold == 0.5 and result.val_threshold is None and len(result.rows) == 1
    assert result.probability.startswith("raw (no calibration.json")
    assert main([str(weights), str(messy_folder / "photo.jpg")]) == 0
    assert "val-calibrated threshold: not available" in capsys.readouterr().out


def test_bad_reference_and_paths_exit_2_without_traceback(trained, messy_folder, tmp_path, capsys):
    assert main([str(tmp_path / "no_such_run"), str(messy_folder)]) == 2
    err = capsys.readouterr().err
    assert "cannot load a detector" in err and "Traceback" not in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((trained["run_dir"] / "config.yaml").read_text())
    (broken / "model.pth").write_bytes(b"not a state dict")
    assert main([str(broken), str(messy_folder)]) == 2
    assert main([str(trained["run_dir"]), str(tmp_path / "missing_folder")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(trained["run_dir"]), str(messy_folder), "--threshold", "1.5"]) == 2
    with pytest.raises(DetectError):
        detect(trained["run_dir"], messy_folder, threshold="high")


def test_nothing_scored_exits_1(trained, messy_folder, capsys):
    assert main([str(trained["run_dir"]), str(messy_folder / "tiny.png"), str(messy_folder / "corrupt.jpg")]) == 1
    out = capsys.readouterr().out
    assert "scored 0 image(s)" in out and "too small" in out


def test_decompression_bomb_is_skipped(trained, tmp_path, monkeypatch):
    folder = tmp_path / "bombs"
    folder.mkdir()
    Image.fromarray(np.zeros((120, 120, 3), np.uint8)).save(folder / "bomb.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 120x120 > 2x the limit: PIL refuses it
    result = detect(trained["run_dir"], folder, progress=False)
    assert [Path(r.path).name for r in result.rows] == ["ok.png"]
    assert [(Path(s.path).name, s.reason) for s in result.skipped] == [("bomb.png", "decompression bomb")]


def test_weights_are_loaded_with_weights_only(trained, messy_folder, monkeypatch):
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    detect(trained["run_dir"], messy_folder / "photo.jpg", progress=False)
    assert seen == [True]
    for source in ("experiments/inference/loading.py", "experiments/training/kinds.py", "experiments/tasks/detect.py"):
        text = (ROOT / source).read_text()
        for call in re.findall(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call, f"{source}: torch.load({call})"


def test_views_and_pooling_are_applied_and_printed(trained, tmp_path, capsys):
    """``--views grid:3 --pooling max``: the max of the detector's own P(synthetic) over the nine native-size crops,
    and the header says so; ``auto`` tiles this spectral detector's 100 x 80 input (over twice its 32 px crop)."""
    from experiments.inference.tiling import parse_views, view_crops

    folder = tmp_path / "big"
    folder.mkdir()
    Image.fromarray(_rgb(np.random.default_rng(1), 80, 100)).save(folder / "wide.png")
    result = detect(trained["run_dir"], folder, views="grid:3", pooling="max", calibrated=False, progress=False)
    det = load_detector(trained["run_dir"])
    crops, _ = view_crops(load_rgb(folder / "wide.png"), det.preprocess, parse_views("grid:3"))
    assert result.rows[0].tiles == len(crops) == 9
    assert result.rows[0].p_synthetic == pytest.approx(float(det.predict_proba(crops).max()), abs=1e-6)
    assert [r.tiles for r in detect(trained["run_dir"], folder, progress=False).rows] == [16]

    assert main([str(trained["run_dir"]), str(folder), "--views", "grid:3", "--pooling", "max"]) == 0
    assert "views grid:3 (crops of 32 px at native size), pooling max" in capsys.readouterr().out
    assert main([str(trained["run_dir"]), str(folder), "--views", "grid:0"]) == 2
    assert "--views='grid:0'" in capsys.readouterr().err


def _column(path: Path, name: str, label: int) -> np.ndarray:
    with path.open() as handle:
        return np.array([float(r[name]) for r in csv.DictReader(handle) if int(r["label"]) == label])


def test_training_stores_an_operating_point_chosen_on_val_reals_and_detect_uses_it(trained, messy_folder, capsys):
    run_dir = trained["run_dir"]
    op = json.loads((run_dir / "calibration.json").read_text())["operating_point"]
    assert op["spec"] == "fpr@0.05" and op["fitted_on"] == "val" and "abstention" not in op
    val_reals = _column(run_dir / "predictions_val.csv", "prob", 0)
    assert op["threshold"] == pytest.approx(np.quantile(val_reals, 0.95)) and op["n_real"] == val_reals.size
    # the test rates at it are those of the per-image test scores the run saved
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test_reals, test_fakes = (_column(run_dir / "predictions_test.csv", "prob", c) for c in (0, 1))
    assert metrics["op/threshold"] == op["threshold"]
    assert metrics["test/fpr_at_op"] == pytest.approx(np.mean(test_reals >= op["threshold"]))
    assert metrics["test/tpr_at_op"] == pytest.approx(np.mean(test_fakes >= op["threshold"]))
    assert metrics["test/fpr_drift_at_op"] == pytest.approx(metrics["test/fpr_at_op"] - 0.05)
    per_generator = [k for k in metrics if k.endswith("/tpr_at_op") and k.count("/") == 2]
    assert per_generator and "test/gen_a/tpr_at_op" in per_generator
    for key in ("test/tpr_at_op", "test/fpr_at_op", *per_generator):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
    assert "test/coverage" not in metrics  # eval.abstain=null: always answers

    result = detect(run_dir, messy_folder, progress=False, calibrated=False)
    assert result.threshold == pytest.approx(op["threshold"])
    assert all(r.label == ("synthetic" if r.p_synthetic >= op["threshold"] else "real") for r in result.rows)
    assert main([str(run_dir), str(messy_folder), "--raw"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"operating point: \S+ \(fpr@0.05 chosen on \d+ real images of the training run's val split.*"
                     r"the verdict uses it", printed), printed
    assert main([str(run_dir), str(messy_folder), "--threshold", "val"]) == 0
    assert "pass --threshold op to use it" in capsys.readouterr().out


def test_an_image_inside_the_abstention_band_is_unsure(trained, messy_folder, tmp_path, capsys):
    run_dir = shutil.copytree(trained["run_dir"], tmp_path / "run")
    raw = detect(run_dir, messy_folder, progress=False, calibrated=False)
    target = raw.rows[0]
    assert all(abs(r.p_synthetic - target.p_synthetic) > 1e-5 for r in raw.rows[1:])
    stored = json.loads((run_dir / "calibration.json").read_text())
    stored["abstention"] = {"spec": "[low, high]", "low": target.p_synthetic - 1e-6,
                            "high": target.p_synthetic + 1e-6, "fitted_on": None}
    (run_dir / "calibration.json").write_text(json.dumps(stored))
    for flags in ([], ["--raw"]):  # the band is stored on raw P and follows the printed scale
        assert main([str(run_dir), str(messy_folder), *flags]) == 0
        printed = capsys.readouterr().out
        rows = {line.split()[-1]: line.split()[1] for line in printed.splitlines() if line.endswith(GOOD)}
        assert rows[target.path] == "unsure", printed
        assert all(label in ("synthetic", "real") for path, label in rows.items() if path != target.path)
        assert "abstention band: [" in printed and "label 'unsure' inside" in printed
        assert re.search(r"scored 6 image\(s\): \d+ synthetic, \d+ real, 1 unsure", printed), printed
