"""task=report on a synthetic MLflow store: interval cells from the logged bootstrap bounds, and mean ± std with
a Student-t interval over seeds."""

from __future__ import annotations

import csv

import mlflow
import pytest
from scipy import stats

from experiments.evaluation.report_table import HEADERS, markdown_headers
from experiments.tasks.report import WORST_SOURCE, report
from tests.conftest import assert_source_tags, compose_config


def log_run(client: mlflow.MlflowClient, exp_id: str, model: str, seed: int, metrics: dict[str, float]) -> None:
    run = client.create_run(exp_id, tags={"task": "train", "model": model, "seed": str(seed)})
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, "FINISHED")


def test_report_shows_bootstrap_cells_for_one_run_and_t_intervals_over_seeds(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    overrides = ["task=report", "experiment=demo", "+logger.tags.note=table"]
    cfg = compose_config(overrides, tmp_path)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp_id = client.create_experiment("detectors-demo", artifact_location=(tmp_path / "mlartifacts").as_uri())
    log_run(client, exp_id, "single", 42, {"test/auc": 0.9421, "test/auc_ci_low": 0.9183, "test/auc_ci_high": 0.9634,
                                           "test/ap": 0.8, "model/params": 10})
    for seed, auc in enumerate((0.80, 0.85, 0.90)):
        log_run(client, exp_id, "seeded", seed, {"test/auc": auc, "test/auc_ci_low": auc - 0.1,
                                                 "test/auc_ci_high": auc + 0.1})
    log_run(client, exp_id, "sourced", 0, {"test/auc": 0.9, "test/source/camera/fpr_at_op": 0.04,  # real sources
                                           "test/source/night_mode/fpr_at_op": 0.21,
                                           "test/source/night_mode/fpr_at_op_ci_low": 0.15,
                                           "test/source/night_mode/fpr_at_op_ci_high": 0.28})

    result = report(cfg)
    rows = {row[0]: dict(zip(HEADERS, row)) for row in result["body"]}
    assert rows["single"]["AUROC"] == "0.942 [0.918, 0.963]"
    assert rows["single"]["AP"] == "0.800"  # no interval logged: the value alone
    half = stats.t.ppf(0.975, df=2) * 0.05 / 3 ** 0.5
    assert rows["seeded"]["AUROC"] == f"0.850 ± 0.050 [{0.85 - half:.3f}, {0.85 + half:.3f}] (n=3)"
    assert result["intervals"]["seeded"]["test/auc"] == pytest.approx((0.85 - half, 0.85 + half))
    assert client.get_experiment(client.get_run(result["run_id"]).info.experiment_id).name == "report-detectors-demo"
    assert_source_tags(client, result["run_id"], overrides, {"note": "table", "preset": "demo"})

    markdown = result["markdown"].read_text()
    assert "0.942 [0.918, 0.963]" in markdown and markdown_headers(markdown) == list(HEADERS)
    printed = capsys.readouterr().out.splitlines()  # 80 columns: one row per (model, metric), nothing cut
    assert all(len(line) <= 80 for line in printed if "│" in line)
    assert any("AUROC" in line and f"0.850 ± 0.050 [{0.85 - half:.3f}, {0.85 + half:.3f}] (n=3)" in line
               for line in printed)
    assert any(str(result["markdown"]) in line for line in printed)
    assert any(line.startswith("[low, high]: 95% interval") for line in printed)
    table = {r["model"]: r for r in csv.DictReader(result["csv"].open())}
    assert float(table["single"]["test/auc_ci_low"]) == pytest.approx(0.9183)
    assert float(table["seeded"]["test/auc_ci_high"]) == pytest.approx(0.85 + half)
    assert table["single"]["interval"] == "bootstrap" and table["seeded"]["interval"] == "t over seeds"
    assert float(table["single"]["test/auc_mean"]) == pytest.approx(0.9421)  # the existing columns stay
    worst = "sourced (seed 0): night_mode: FPR 0.210 [0.150, 0.280] (of 2 real sources)"  # the highest FPR named
    assert f"## {WORST_SOURCE}\n\n- {worst}\n" in markdown and f"  {worst}" in printed
    assert not any(line.startswith("  single") for line in printed)  # no per-source rates logged: no line
