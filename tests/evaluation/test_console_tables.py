"""Console tables at 80 columns: wide when they fit, one row per (name, metric) when they do not, never a cut name
or an interval wrapped over lines."""

from __future__ import annotations

import io

from rich.console import Console

from experiments.evaluation.console_tables import fitted_table, natural_width
from experiments.evaluation.report_table import HEADERS, report_table
from experiments.evaluation.seed_summary import RunRow
from tests.evaluation.test_report_table import LOGGED

LONG_NAMES = ("radial_angular_logreg_long_name", "all_but_bilinear_conv_seeded")


def printed(table, width: int = 80) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.file.getvalue()


def test_report_folds_to_one_row_per_model_and_metric_at_80_columns():
    rows = [RunRow("a", LONG_NAMES[0], "0", 0, LOGGED)]
    rows += [RunRow(f"s{i}", LONG_NAMES[1], str(i), 0, {k: v if k.startswith("op/") else v - 0.01 * i
                                                         for k, v in LOGGED.items()}) for i in range(3)]
    body = report_table(rows).body
    table = fitted_table("detectors-demo: test metrics", HEADERS, body, width=80)
    text = printed(table)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text
    lines = text.splitlines()
    for name in LONG_NAMES:  # whole names, each on one line
        assert any(name in line for line in lines), name
    for cells in body:  # every value and interval on one line
        for cell in cells[1:]:
            assert any(cell in line for line in lines), cell
    for header in HEADERS[1:]:  # one row per metric
        assert sum(header in line for line in lines) == 2, header


def test_long_format_has_model_metric_value_columns_when_they_fit():
    body = report_table([RunRow("a", "radial_angular_logreg", "0", 0, LOGGED),
                         RunRow("b", "resnet34_localfft", "0", 0, LOGGED)]).body
    table = fitted_table("t", HEADERS, body, width=80)
    assert [c.header for c in table.columns] == ["model", "metric", "value"]
    lines = printed(table).splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any("radial_angular_logreg" in line and "accuracy at 0.5" in line and "0.872 [0.836, 0.908]" in line
               for line in lines)
    assert sum("TPR at 5% FPR" in line and "0.711 [0.633, 0.878]" in line for line in lines) == 2


def test_a_table_that_fits_stays_wide():
    headers, body = ("model", "AUROC"), [["npr", "0.948 [0.924, 0.968]"]]
    table = fitted_table("t", headers, body, width=80)
    assert natural_width(table) <= 80
    assert [c.header for c in table.columns] == list(headers)
    text = printed(table)
    assert any("npr" in line and "0.948 [0.924, 0.968]" in line for line in text.splitlines())


def test_unfolded_report_at_80_columns_cuts_names():
    """The failure the long format removes: the wide report at 80 columns cuts names and wraps intervals."""
    body = report_table([RunRow("a", LONG_NAMES[0], "0", 0, LOGGED)]).body
    from experiments.evaluation.console_tables import wide_table
    text = printed(wide_table("t", HEADERS, body))
    assert not any(LONG_NAMES[0] in line for line in text.splitlines()) or "…" in text


def test_a_generator_matrix_with_long_names_folds_to_one_row_per_cell():
    """The cross-generator matrix of train_on_one at 80 columns: ``all_but_…`` names and intervals stay whole."""
    gens = ["all_but_bilinear_conv", "all_but_nearest_conv", "all_but_deconv"]
    body = [[train, *(f"0.{900 + i + j}0 [0.850, 0.950]" for j in range(3))] for i, train in enumerate(gens)]
    text = printed(fitted_table("m auc", ["train \\ test", *gens], body, width=80, column_label="tested on"))
    lines = text.splitlines()
    assert "…" not in text and all(len(line) <= 80 for line in lines)
    assert any(gens[0] in line and gens[1] in line and "0.9010 [0.850, 0.950]" in line for line in lines)
