"""The table of task=report: its columns, its cells from the logged metrics, its Markdown, and the README's demo
table that is pasted from it."""

from __future__ import annotations

from pathlib import Path

from experiments.evaluation.report_table import HEADERS, markdown_headers, markdown_table, report_table
from experiments.evaluation.seed_summary import RunRow

ROOT = Path(__file__).resolve().parents[2]

#: What one demo training run logs (test split), with its bootstrap bounds.
LOGGED = {
    "test/accuracy": 0.8722, "test/accuracy_ci_low": 0.8361, "test/accuracy_ci_high": 0.9083,
    "test/accuracy_at_val_threshold": 0.8806, "test/accuracy_at_val_threshold_ci_low": 0.8444,
    "test/accuracy_at_val_threshold_ci_high": 0.9139,
    "test/auc": 0.9481, "test/auc_ci_low": 0.9243, "test/auc_ci_high": 0.9684,
    "test/tpr_at_op": 0.6833, "test/tpr_at_op_ci_low": 0.6222, "test/tpr_at_op_ci_high": 0.7444,
    "test/fpr_at_op": 0.0611, "test/fpr_at_op_ci_low": 0.0278, "test/fpr_at_op_ci_high": 0.1, "op/target_fpr": 0.05,
    "test/ap": 0.9524, "test/ap_ci_low": 0.9312, "test/ap_ci_high": 0.9711,
    "test/tpr_at_5fpr": 0.7111, "test/tpr_at_5fpr_ci_low": 0.6333, "test/tpr_at_5fpr_ci_high": 0.8778,
    "test/ece": 0.0431, "test/ece_calibrated": 0.0729, "time/fit_seconds": 4.2, "model/params": 193.0,
}


def test_columns_are_what_a_deployment_reads_in_order():
    assert HEADERS == ("model", "accuracy at 0.5", "accuracy at val threshold", "AUROC", "TPR at val op (fpr@0.05)",
                       "FPR at val op", "AP", "TPR at 5% FPR", "ECE → calibrated", "fit time (s)", "params")


def test_markdown_of_a_small_set_of_runs():
    cnn = {"test/accuracy": 0.5, "test/auc": 0.9, "test/ap": 0.85, "test/tpr_at_5fpr": 0.4, "test/ece": 0.2,
           "test/accuracy_at_val_threshold": 0.8, "time/fit_seconds": 100.0, "model/params": 21_400_000.0}
    rows = [RunRow("r1", "radial_angular_logreg", "42", 0, LOGGED)]
    # two seeds of a detector without intervals and without a calibrator: mean ± std (n), ECE alone
    rows += [RunRow(f"c{i}", "cnn", str(i), 0, {k: v + 0.02 * i for k, v in cnn.items()}) for i in range(2)]
    text = markdown_table(report_table(rows).body)
    assert text.splitlines() == [
        "| model | accuracy at 0.5 | accuracy at val threshold | AUROC | TPR at val op (fpr@0.05) | FPR at val op "
        "| AP | TPR at 5% FPR | ECE → calibrated | fit time (s) | params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| cnn | 0.510 ± 0.014 [0.383, 0.637] (n=2) | 0.810 ± 0.014 [0.683, 0.937] (n=2) "
        "| 0.910 ± 0.014 [0.783, 1.037] (n=2) | n/a | n/a | 0.860 ± 0.014 [0.733, 0.987] (n=2) "
        "| 0.410 ± 0.014 [0.283, 0.537] (n=2) | 0.210 | 100.0 ± 0.0 (n=2) | 21,400,000 |",
        "| radial_angular_logreg | 0.872 [0.836, 0.908] | 0.881 [0.844, 0.914] | 0.948 [0.924, 0.968] "
        "| 0.683 [0.622, 0.744] | 0.061 [0.028, 0.100] "
        "| 0.952 [0.931, 0.971] | 0.711 [0.633, 0.878] | 0.043 → 0.073 | 4.2 | 193 |",
    ]
    assert markdown_headers(text) == list(HEADERS)


def test_a_run_without_the_newer_metrics_reads_n_a():
    body = report_table([RunRow("r", "old", "0", 0, {"test/auc": 0.9})]).body
    assert dict(zip(HEADERS, body[0])) == {
        "model": "old", "accuracy at 0.5": "n/a", "accuracy at val threshold": "n/a", "AUROC": "0.900",
        "TPR at val op (fpr@0.05)": "n/a", "FPR at val op": "n/a", "AP": "n/a",
        "TPR at 5% FPR": "n/a", "ECE → calibrated": "n/a", "fit time (s)": "n/a", "params": "n/a"}


def test_an_operating_point_at_another_fpr_names_it_in_its_cells():
    logged = {**LOGGED, "op/target_fpr": 0.01}
    cells = dict(zip(HEADERS, report_table([RunRow("r", "m", "0", 0, logged)]).body[0]))
    assert cells["TPR at val op (fpr@0.05)"] == "0.683 [0.622, 0.744] (fpr@0.01)"
    assert cells["FPR at val op"] == "0.061 [0.028, 0.100] (fpr@0.01)"


def test_readme_demo_table_has_the_columns_the_report_writes():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Demo results\n", 1)[1].split("\n## ", 1)[0]
    assert markdown_headers(section) == list(HEADERS), "paste the demo table from task=report's comparison.md"
