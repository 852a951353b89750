"""What every training run records for statistics: bootstrap intervals of its test metrics, and its per-image
val and test predictions (both kinds of detector); the seeds sweep preset."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest

from experiments.evaluation.predictions import (
    INTERVAL_METRICS,
    PREDICTION_COLUMNS,
    BootstrapSettings,
    Predictions,
    score,
)
from experiments.tasks.compare import compare
from experiments.tasks.train import train
from tests.conftest import compose_config, make_genimage_tree


def toy_predictions(n: int = 120, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    generator = (np.arange(n) // 2) % 2  # both classes in each generator
    prob = np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2, n), 0, 1)
    return Predictions(prob, label, generator, np.arange(n), ["gen a", "gen_b"])


def test_score_adds_intervals_around_the_unchanged_metrics():
    val, test = toy_predictions(seed=1), toy_predictions(seed=2)
    plain = score(val, test)
    with_ci = score(val, test, bootstrap=BootstrapSettings(resamples=300, confidence=0.9, seed=7))
    assert {k: v for k, v in with_ci.items() if "_ci_" not in k} == plain  # existing names and values unchanged
    assert not any("_ci_" in k for k in plain)
    for group in ("test", "test/gen_a", "test/gen_b"):
        for metric in INTERVAL_METRICS:
            low, high = with_ci[f"{group}/{metric}_ci_low"], with_ci[f"{group}/{metric}_ci_high"]
            assert low <= with_ci[f"{group}/{metric}"] + 1e-9 and with_ci[f"{group}/{metric}"] <= high + 1e-9, \
                (group, metric)
    assert with_ci["test/auc_ci_high"] - with_ci["test/auc_ci_low"] > 0.01
    assert "test/accuracy_at_val_threshold_ci_low" in with_ci
    again = score(val, test, bootstrap=BootstrapSettings(resamples=300, confidence=0.9, seed=7))
    assert again == with_ci  # seeded
    assert score(val, test, bootstrap=BootstrapSettings(resamples=0)) == plain


def settings_of(cfg) -> BootstrapSettings:
    """The settings ``task=train`` and ``task=evaluate`` build from their config."""
    return BootstrapSettings(int(cfg.stats.bootstrap_resamples), float(cfg.stats.confidence), int(cfg.seed or 0))


def test_bootstrap_settings_come_from_the_config_and_name_bad_keys(tmp_path):
    cfg = compose_config(["seed=3", "stats.bootstrap_resamples=50"], tmp_path)
    assert settings_of(cfg) == BootstrapSettings(50, 0.95, 3)
    cfg.stats.confidence = 95
    with pytest.raises(ValueError, match="stats.confidence"):
        settings_of(cfg)
    with pytest.raises(ValueError, match="stats.bootstrap_resamples"):
        BootstrapSettings(resamples=-1)


def test_seeds_preset_sweeps_three_seeds(tmp_path):
    cfg = compose_config(["experiment=demo", "seeds=three"], tmp_path)
    assert str(cfg.hydra.sweeper.params.seed) == "0,1,2"
    assert "seed" not in (compose_config([], tmp_path).hydra.sweeper.params or {})


TINY = ["data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.batch_size=8",
        "data.num_workers=0", "trainer=cpu", "trainer.max_epochs=1", "diagnostics=false",
        "stats.bootstrap_resamples=200", "~callbacks.progress_bar"]
MODELS = {
    "resnet34_localfft": ["model=resnet34_localfft", "model.backbone.name=resnet18", "model.net.head_hidden=16"],
    "radial_angular_logreg": ["model=radial_angular_logreg"],
}


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory) -> tuple[Path, Path]:
    """Both kinds of detector trained for one epoch on one tiny GenImage tree, into one MLflow store."""
    root = tmp_path_factory.mktemp("runs")
    tree = make_genimage_tree(root / "genimage", n=6, size=32)
    for model, overrides in MODELS.items():
        cfg = compose_config([*overrides, f"data.root={tree}", *TINY], root / model)
        cfg.logger.tracking_uri = f"sqlite:///{root / 'mlruns.db'}"
        cfg.logger.artifact_location = str(root / "mlartifacts")
        train(cfg)
    return root, tree


@pytest.mark.parametrize("model", sorted(MODELS))
def test_training_run_saves_predictions_and_intervals(model, trained_store):
    root, tree = trained_store
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id],
                              filter_string=f"tags.model = '{model}'")
    assert len(runs) == 1
    run = runs[0]
    metrics = run.data.metrics
    for name in ("auc", "accuracy", "ap", "eer"):
        assert metrics[f"test/{name}_ci_low"] <= metrics[f"test/{name}"] + 1e-9 <= metrics[f"test/{name}_ci_high"] + 2e-9
    assert "test/gen_a/auc_ci_low" in metrics and "test/gen_b/accuracy_ci_high" in metrics

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictions_test.csv", "predictions_val.csv"} <= artifacts
    out = root / model / "out"
    rows = list(csv.DictReader((out / "predictions_test.csv").open()))
    assert tuple(rows[0]) == PREDICTION_COLUMNS
    assert len(rows) == 2 * 2 * 6  # every test image once: 2 generators x 2 classes x 6
    for row in rows:
        assert row["path"].startswith(str(tree)) and row["generator"] in row["path"]
        assert row["label"] == ("1" if "/ai/" in row["path"] else "0")
        assert 0.0 <= float(row["prob"]) <= 1.0
    accuracy = np.mean([(float(r["prob"]) >= 0.5) == (r["label"] == "1") for r in rows])
    assert math.isclose(accuracy, metrics["test/accuracy"], abs_tol=1e-9)
    val_rows = list(csv.DictReader((out / "predictions_val.csv").open()))
    assert val_rows and "/train/" in val_rows[0]["path"]  # val is a hold-out of the train folders
    assert {r["source"] for r in rows if r["label"] == "0"} == {"gen_a", "gen_b"}  # a real's generator folder
    assert {r["source"] for r in rows if r["label"] == "1"} == {""}
    for source in ("gen_a", "gen_b"):  # its FPR at the operating point chosen on val's reals
        key = f"test/source/{source}/fpr_at_op"
        reals = [float(r["prob"]) for r in rows if r["source"] == source]
        assert 0.0 <= metrics[key] <= 1.0 and math.isclose(
            metrics[key], np.mean(np.array(reals) >= _val_threshold(out)), abs_tol=1e-9)
    assert {"real_sources/source_fpr.csv", "real_sources/source_generator_auc.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "real_sources")}


def _val_threshold(out: Path) -> float:
    """The fpr@0.05 threshold of a run's val reals, from its predictions_val.csv."""
    reals = [float(r["prob"]) for r in csv.DictReader((out / "predictions_val.csv").open()) if r["label"] == "0"]
    return float(np.quantile(reals, 0.95))


def test_compare_reads_the_predictions_that_training_saved(trained_store, tmp_path):
    root, _ = trained_store
    cfg = compose_config(["task=compare", "data=genimage_tiny"], tmp_path)
    cfg.logger.tracking_uri = f"sqlite:///{root / 'mlruns.db'}"
    result = compare(cfg)
    assert result["n_images"] == 24 and len(result["results"]) == 1
    pair = result["results"][0]
    assert (pair.a, pair.b) == tuple(sorted(MODELS))
    assert 0.0 <= pair.delong_p_holm <= 1.0 and 0.0 <= pair.mcnemar_p_holm <= 1.0
