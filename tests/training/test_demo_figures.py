"""The README's demo table is what the code gives: radial_angular_logreg, trained as ``make demo`` trains it (same
data, split, seed and config), reproduces its row's test AUROC and accuracy at 0.5 to the printed digit.

The scikit-learn detector trains in seconds and is deterministic on one machine, so this test pins the whole
path from the demo files to the table: the demo set, the split, the feature code, the metric engine. The CNN rows
come from the same run of ``make demo`` (their training takes minutes on a CPU).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from experiments.tasks.train import train
from tests.conftest import compose_config

README = Path(__file__).resolve().parents[2] / "README.md"
MODEL = "radial_angular_logreg"


def demo_table() -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by model) of the first table of the README's "Demo results" section."""
    section = README.read_text().split("## Demo results", 1)[1].split("\n## ", 1)[0]
    first = section[section.index("\n|"):].split("\n\n", 1)[0]  # the first table, up to its blank line
    lines = [line for line in first.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, rows = cells[0], [c for c in cells[2:] if c and c[0]]
    return header, {re.sub(r"\s*\(.*\)$", "", row[0]).strip("` "): row for row in rows}


def value_of(cell: str) -> str:
    """The printed value of a cell, without its interval: ``"0.948 [0.924, 0.968]"`` -> ``"0.948"``."""
    return cell.split("[", 1)[0].strip()


def test_the_demo_table_has_the_columns_this_test_reads():
    header, rows = demo_table()
    assert {"model", "accuracy at 0.5", "AUROC"} <= set(header), header
    assert MODEL in rows, sorted(rows)


@pytest.fixture(scope="module")
def demo_metrics(tmp_path_factory) -> dict[str, float]:
    tmp = tmp_path_factory.mktemp("demo_figures")
    cfg = compose_config(["experiment=demo", f"model={MODEL}", "diagnostics=false"], tmp)
    train(cfg)
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_radial_angular_logreg_reproduces_its_readme_row(demo_metrics):
    header, rows = demo_table()
    row = dict(zip(header, rows[MODEL]))
    printed = {"AUROC": "test/auc", "accuracy at 0.5": "test/accuracy"}
    for column, metric in printed.items():
        digits = len(value_of(row[column]).split(".")[1])
        assert f"{demo_metrics[metric]:.{digits}f}" == value_of(row[column]), (
            f"README's {MODEL} {column} is {value_of(row[column])}, the demo run gives {demo_metrics[metric]:.6f}: "
            "re-run `make demo` and paste the Markdown table that `task=report experiment=demo` writes"
        )
