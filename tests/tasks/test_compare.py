"""Paired comparison of detectors: alignment by image path, DeLong / McNemar / Holm per pair, and task=compare
on a synthetic MLflow store with known answers."""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest

from experiments.evaluation.comparison import (
    DetectorScores,
    MismatchedImages,
    align,
    matrix,
    pairing_keys,
    pairwise_tests,
)
from experiments.evaluation.predictions import PREDICTION_COLUMNS
from experiments.tasks.compare import NotEnoughDetectors, compare, load_detectors
from tests.conftest import assert_source_tags, compose_config

N = 200


def toy_scores(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Image paths, labels and three detectors: ``good`` separates the classes, ``weak`` barely does, and
    ``weak_copy`` has exactly ``weak``'s scores."""
    rng = np.random.default_rng(seed)
    paths = np.array([f"gen_a/val/{'ai' if i % 2 else 'nature'}/{i:04d}.png" for i in range(N)], dtype=object)
    labels = np.arange(N) % 2
    good = np.clip(0.2 + 0.6 * labels + rng.normal(0, 0.08, N), 0, 1)
    weak = np.clip(0.5 + 0.05 * labels + rng.normal(0, 0.15, N), 0, 1)
    return paths, labels, {"good": good, "weak": weak, "weak_copy": weak.copy()}


def test_align_matches_rows_by_path_whatever_their_order():
    paths, labels, probs = toy_scores()
    order = np.random.default_rng(1).permutation(N)
    a = DetectorScores("good", "run_a", paths, labels, probs["good"])
    b = DetectorScores("weak", "run_b", paths[order], labels[order], probs["weak"][order])
    aligned_paths, aligned_labels, aligned = align([a, b])
    sort = np.argsort(paths)
    assert list(aligned_paths) == list(paths[sort])
    np.testing.assert_array_equal(aligned_labels, labels[sort])
    np.testing.assert_array_equal(aligned[1], probs["weak"][sort])


def test_align_refuses_different_images_naming_the_runs_and_the_count():
    paths, labels, probs = toy_scores()
    a = DetectorScores("good", "run_a", paths, labels, probs["good"])
    other = paths.copy()
    other[:3] = ["elsewhere/0.png", "elsewhere/1.png", "elsewhere/2.png"]
    b = DetectorScores("weak", "run_b", other, labels, probs["weak"])
    with pytest.raises(MismatchedImages, match=r"run_a \(good.*run_b \(weak.*3 only in the first, 3 only in the second"):
        align([a, b])
    shorter = DetectorScores("weak", "run_c", paths[:-5], labels[:-5], probs["weak"][:-5])
    with pytest.raises(MismatchedImages, match="5 only in the first, 0 only in the second"):
        align([a, shorter])


def test_clearly_better_detector_is_significant_and_identical_ones_are_not():
    paths, labels, probs = toy_scores()
    names = ["good", "weak", "weak_copy"]
    results = pairwise_tests(names, labels, np.stack([probs[n] for n in names]), [0.5, 0.5, 0.5])
    by_pair = {(r.a, r.b): r for r in results}
    assert set(by_pair) == {("good", "weak"), ("good", "weak_copy"), ("weak", "weak_copy")}
    better = by_pair[("good", "weak")]
    assert better.delta_auc > 0.2 and better.delta_auc_low > 0
    assert better.delong_p_holm < 0.05 and better.mcnemar_p_holm < 0.05
    assert better.delong_p_holm >= better.delong_p  # Holm never lowers a p-value
    same = by_pair[("weak", "weak_copy")]
    assert same.delta_auc == 0 and same.delong_p_holm == 1.0 and same.mcnemar_p_holm == 1.0
    assert same.b_only == same.c_only == 0
    delta = matrix(names, results, "delta_auc", antisymmetric=True)
    assert delta[0, 1] == pytest.approx(-delta[1, 0]) and np.isnan(delta[0, 0])


def test_mcnemar_uses_each_detectors_own_threshold():
    _, labels, probs = toy_scores()
    shifted = np.clip(probs["good"] * 0.4, 0, 1)  # same ranking, every score below 0.5
    results = pairwise_tests(["good", "shifted"], labels, np.stack([probs["good"], shifted]), [0.5, 0.2])
    assert results[0].delta_auc == pytest.approx(0.0, abs=1e-12)
    assert results[0].acc_a == pytest.approx(results[0].acc_b)  # at its own threshold it is as accurate
    assert results[0].mcnemar_p_holm == 1.0


# ---------------------------------------------------------------- task=compare on a synthetic store
#: the columns of the predictions files written before the relative path and the content hash
LEGACY_COLUMNS = ("index", "path", "label", "generator", "prob")


def toy_hash(relpath: str) -> str:
    return hashlib.sha256(relpath.encode()).hexdigest()


def write_predictions(folder: Path, paths, labels, probs, root: str = "/data/genimage",
                      columns: tuple[str, ...] = PREDICTION_COLUMNS) -> Path:
    """A predictions CSV with ``columns``: ``path`` under ``root``, ``relpath`` the toy path, ``hash`` one per
    image (the same on every root)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "predictions_test.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for i, (p, y, s) in enumerate(zip(paths, labels, probs)):
            row = {"index": i, "path": f"{root}/{p}", "relpath": p, "hash": toy_hash(p), "label": int(y),
                   "generator": "gen_a", "prob": repr(float(s)), "source": "gen_a" if int(y) == 0 else ""}
            writer.writerow([row[c] for c in columns])
    return path


def fake_store(tmp_path: Path, detectors: dict[str, tuple], roots: dict[str, str] | None = None,
               columns: dict[str, tuple[str, ...]] | None = None) -> mlflow.MlflowClient:
    """``detectors-demo`` with one finished training run per detector, its threshold and predictions CSV."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp_id = client.create_experiment("detectors-demo", artifact_location=(tmp_path / "mlartifacts").as_uri())
    for name, (paths, labels, probs) in detectors.items():
        run = client.create_run(exp_id, tags={"task": "train", "model": name, "seed": "42"})
        client.log_metric(run.info.run_id, "threshold/val_calibrated", 0.5)
        written = write_predictions(tmp_path / "csv" / name, paths, labels, probs,
                                    (roots or {}).get(name, "/data/genimage"),
                                    (columns or {}).get(name, PREDICTION_COLUMNS))
        client.log_artifact(run.info.run_id, str(written))
        client.set_terminated(run.info.run_id, "FINISHED")
    return client


def test_task_compare_reports_significance_and_logs_to_its_own_experiment(tmp_path, capsys):
    paths, labels, probs = toy_scores()
    client = fake_store(tmp_path, {name: (paths, labels, p) for name, p in probs.items()})
    overrides = ["task=compare", "experiment=demo", "+logger.tags.note=paired"]
    cfg = compose_config(overrides, tmp_path)
    result = compare(cfg)
    printed = capsys.readouterr().out
    assert "ΔAUROC" in printed and "McNemar" in printed
    assert "AUROC: good > weak" in printed and "AUROC: good > weak_copy" in printed
    assert "weak > weak_copy" not in printed and "weak_copy > weak" not in printed
    by_pair = {(r.a, r.b): r for r in result["results"]}
    assert by_pair[("good", "weak")].delong_p_holm < 0.05
    assert by_pair[("weak", "weak_copy")].delong_p_holm == 1.0
    assert result["n_images"] == N
    out = tmp_path / "reports" / "compare" / "detectors-demo"
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    assert len(rows) == 3 and {"delta_auc", "delong_p_holm", "mcnemar_p_holm"} <= set(rows[0])
    assert (out / "delta_auc.png").stat().st_size > 1000
    assert (out / "delta_auc.csv").read_text().startswith("row - column,good,weak,weak_copy")
    logged = client.get_run(result["run_id"])
    assert client.get_experiment(logged.info.experiment_id).name == "compare-detectors-demo"  # the one it read
    assert_source_tags(client, result["run_id"], overrides, {"note": "paired", "preset": "demo"})
    # its artifacts go with the store's, not to ./mlruns of the working directory
    assert str(tmp_path / "mlartifacts") in client.get_experiment(logged.info.experiment_id).artifact_location
    assert logged.data.tags["task"] == "compare"
    assert logged.data.metrics["compare/weak_vs_weak_copy/delong_p_holm"] == 1.0
    assert {a.path for a in client.list_artifacts(result["run_id"], "compare")} >= {
        "compare/pairs.csv", "compare/delta_auc.png", "compare/delong_p_holm.png"}


def test_task_compare_refuses_runs_scored_on_different_images(tmp_path):
    paths, labels, probs = toy_scores()
    fake_store(tmp_path, {"good": (paths, labels, probs["good"]),
                          "weak": (paths[:-4], labels[:-4], probs["weak"][:-4])})
    cfg = compose_config(["task=compare", "experiment=demo"], tmp_path)
    with pytest.raises(MismatchedImages, match="not scored on identical images: 4 only in the first"):
        compare(cfg)


def test_task_compare_needs_two_detectors_with_predictions(tmp_path):
    paths, labels, probs = toy_scores()
    client = fake_store(tmp_path, {"good": (paths, labels, probs["good"])})
    old = client.create_run(client.get_experiment_by_name("detectors-demo").experiment_id,
                            tags={"task": "train", "model": "legacy", "seed": "42"})
    client.set_terminated(old.info.run_id, "FINISHED")
    cfg = compose_config(["task=compare", "experiment=demo"], tmp_path)
    with pytest.raises(NotEnoughDetectors, match="legacy"):
        compare(cfg)


def test_matrices_fold_to_one_row_per_pair_at_80_columns(capsys, monkeypatch):
    from experiments.evaluation.comparison import PairResult
    from experiments.tasks.compare import print_comparison

    monkeypatch.setenv("COLUMNS", "80")
    names = ["resnet34_localfft", "radial_angular_logreg", "spectraforge_dual", "efficientnet_spatial"]
    results = [PairResult(a, b, 0.9, 0.8, 0.1, 0.05, 0.15, 1e-4, 0.9, 0.8, 30, 10, 1e-3, "exact", 4e-4, 3e-3)
               for i, a in enumerate(names) for b in names[i + 1:]]
    print_comparison("detectors-demo", names, results, 360, 0.05, 0.95)
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert "…" not in printed and all(len(line) <= 80 for line in lines if "│" in line)
    assert sum("+0.100 (p=0.0004) *" in line for line in lines) == 6  # each pair once per direction, ΔAUROC
    assert any("radial_angular_logreg" in line and "efficientnet_spatial" in line for line in lines)


def test_runs_scored_on_different_mounts_pair_by_content_hash(tmp_path, caplog):
    paths, labels, probs = toy_scores()
    order = np.random.default_rng(3).permutation(N)
    client = fake_store(tmp_path, {"good": (paths, labels, probs["good"]),
                                   "weak": (paths[order], labels[order], probs["weak"][order])},
                        roots={"good": "/mnt/cluster/genimage", "weak": "/home/me/data/genimage"})
    with caplog.at_level(logging.WARNING):
        detectors = load_detectors(client, "detectors-demo")
    assert not [r for r in caplog.records if "paired by" in r.message]
    keys, aligned_labels, aligned = align(detectors)
    assert set(keys) == {toy_hash(p) for p in paths}
    by_hash = {toy_hash(p): i for i, p in enumerate(paths)}
    index = [by_hash[k] for k in keys]
    np.testing.assert_array_equal(aligned_labels, labels[index])
    np.testing.assert_array_equal(aligned[1], probs["weak"][index])


def test_old_runs_pair_by_relative_path_then_by_path_and_say_so(tmp_path, caplog):
    paths, labels, probs = toy_scores()
    old = ("index", "path", "relpath", "label", "generator", "prob")
    client = fake_store(tmp_path, {"good": (paths, labels, probs["good"]), "weak": (paths, labels, probs["weak"])},
                        roots={"good": "/mnt/a", "weak": "/mnt/b"}, columns={"weak": old})
    with caplog.at_level(logging.WARNING):
        detectors = load_detectors(client, "detectors-demo")
    assert any("paired by relative path" in r.message for r in caplog.records)
    assert align(detectors)[0].tolist() == sorted(paths)
    oldest = fake_store(tmp_path / "oldest", {"good": (paths, labels, probs["good"]),
                                              "weak": (paths, labels, probs["weak"])},
                        columns={"good": LEGACY_COLUMNS, "weak": LEGACY_COLUMNS})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        detectors = load_detectors(oldest, "detectors-demo")
    assert any("paired by absolute path" in r.message for r in caplog.records)
    assert align(detectors)[0][0].startswith("/data/genimage/")


def test_identical_files_get_distinct_hash_keys():
    from experiments.evaluation.comparison import PredictionFile

    same = PredictionFile(np.array(["/r/b.png", "/r/a.png", "/r/c.png"], dtype=object),
                          np.array(["b.png", "a.png", "c.png"], dtype=object), np.array(["h1", "h1", "h2"], dtype=object),
                          np.array([0, 0, 1]), np.array([0.1, 0.1, 0.9]))
    (keys,), kind = pairing_keys([same])
    assert kind == "hash" and keys.tolist() == ["h1#1", "h1", "h2"]  # a.png is the first copy by relative path
