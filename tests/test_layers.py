"""The floors stay honest: every module imports, and no module imports a floor above its own.

The rule is the import table of docs/architecture.md, parsed here, so the document and the test cannot
disagree. It is checked on the import statements themselves, so a lazy import inside a function counts as
much as one at the top. The package graph built from those imports has no cycle and no upward edge.
Beside it: no source file over 450 lines, no string table that chooses an object by name, and no library
module that takes the composed config.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "detectors", "experiments")
DOC = ROOT / "docs" / "architecture.md"
TABLE_HEADER = ("floor", "package", "may import", "never imports")
MAX_LINES = 450


# -- the rule: the import table of docs/architecture.md ------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One row of the import table: a package on a floor, what it may import and what it never imports."""

    floor: int
    package: str
    may_import: frozenset[str]
    never_imports: frozenset[str] = field(default_factory=frozenset)


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def parse_import_table(markdown: str) -> dict[str, Row]:
    """The rows of the Markdown table whose header is :data:`TABLE_HEADER`, keyed by package.

    "every floor below" in a "may import" cell stands for every package of a lower floor, "its own floor" for
    the other packages of its floor, "nothing" for none.
    """
    lines = [line.strip() for line in markdown.splitlines()]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    start = next(i for i, row in enumerate(cells) if tuple(c.lower() for c in row) == TABLE_HEADER)
    raw = []
    for row in cells[start + 2:]:  # after the header and its |---| line
        if len(row) != len(TABLE_HEADER) or not row[0].strip().isdigit():
            break
        floor, package, may, never = row
        raw.append((int(floor), _names(package)[0], may, frozenset(_names(never))))
    rows = {}
    for floor, package, may, never in raw:
        allowed = set(_names(may))
        if "every floor below" in may:
            allowed |= {p for f, p, _, _ in raw if f < floor}
        if "its own floor" in may:
            allowed |= {p for f, p, _, _ in raw if f == floor and p != package}
        rows[package] = Row(floor, package, frozenset(allowed), never)
    return rows


RULES = parse_import_table(DOC.read_text())


def row_of(module: str, rules: dict[str, Row] = RULES) -> Row | None:
    """The row of the longest package name that starts ``module``; None for modules of no floor."""
    matches = [p for p in rules if module == p or module.startswith(p + ".")]
    return rules[max(matches, key=len)] if matches else None


# -- the imports ---------------------------------------------------------------------------------------------
def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def source_of(module: str) -> str:
    path = ROOT / Path(*module.split("."))
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()


def imported_names(module: str, source: str) -> set[str]:
    """Every module an import statement of ``source`` names, ``from a import b`` as ``a`` and ``a.b``
    (relative imports resolved against ``module``)."""
    package = module.split(".") if (ROOT / Path(*module.split("."))).is_dir() else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] if node.level else [])
            name = ".".join(n for n in (base, node.module or "") if n)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def violations(module: str, source: str, rules: dict[str, Row] = RULES) -> list[str]:
    """What ``module`` (with this ``source``) imports against its row of the table."""
    own = row_of(module, rules)
    bad = []
    for name in sorted(imported_names(module, source)):
        top = name.split(".")[0]
        if top not in PACKAGES:
            if own is not None and top in own.never_imports:
                bad.append(f"{name} (never imported by {own.package})")
            continue
        target = row_of(name, rules)
        if target is None:  # the bare package ``experiments``, or ``from experiments import tracking``'s first name
            continue
        if own is None:
            bad.append(f"{name} (the package {module} itself imports nothing)")
        elif target.package != own.package and target.package not in own.may_import:
            bad.append(f"{name} (floor {target.floor}, {target.package}: not in {own.package}'s row)")
    return bad


def package_graph(rules: dict[str, Row] = RULES) -> dict[str, set[str]]:
    """Row -> the other rows its modules import."""
    graph: dict[str, set[str]] = {p: set() for p in rules}
    for module in module_names():
        own = row_of(module, rules)
        if own is None:
            continue
        for name in imported_names(module, source_of(module)):
            target = row_of(name, rules) if name.split(".")[0] in PACKAGES else None
            if target is not None and target.package != own.package:
                graph[own.package].add(target.package)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def upward_edges(graph: dict[str, set[str]], rules: dict[str, Row] = RULES) -> list[str]:
    """Edges to a higher floor, or within a floor, that the table does not allow."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if rules[b].floor > rules[a].floor or b not in rules[a].may_import)


# -- the floors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", module_names())
def test_every_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("module", module_names())
def test_no_module_imports_a_floor_above_it(module):
    bad = violations(module, source_of(module))
    assert not bad, f"{module} imports {bad}: see the import table of docs/architecture.md"


def test_every_module_has_a_floor():
    homeless = [m for m in module_names() if row_of(m) is None and m != "experiments"]
    assert not homeless, f"add a row to the import table of docs/architecture.md for {homeless}"


def test_the_package_graph_has_no_cycle_and_no_upward_edge():
    graph = package_graph()
    assert find_cycle(graph) is None, f"packages import each other: {' -> '.join(find_cycle(graph))}"
    assert not upward_edges(graph)


def test_the_table_is_the_documented_order():
    floors = {p: r.floor for p, r in RULES.items()}
    assert floors["experiments.tasks"] == max(floors.values())
    assert floors["features"] < floors["detectors"] < floors["experiments.data"] < floors["experiments.evaluation"] \
        < floors["experiments.training"] < floors["experiments.inference"] < floors["experiments.bench"]
    ground = {"experiments.tracking", "experiments.runs", "experiments.errors", "experiments.process",
              "experiments.safe_paths"}
    assert {p for p, f in floors.items() if f == 0} == ground
    assert not any(p in RULES[q].may_import for p in ("experiments.tasks",) for q in RULES)  # nothing imports a task
    assert "experiments.inference" not in RULES["experiments.training"].may_import
    data = RULES["experiments.data"]
    assert "experiments.tracking" not in data.may_import and "mlflow" in data.never_imports
    assert RULES["features"].may_import == frozenset()


def test_the_rules_can_fail():
    # a lower floor importing a higher one, lazily inside a function too
    assert violations("experiments.data.fake", "def f():\n    from experiments.training.kinds import x\n")
    assert violations("experiments.evaluation.fake", "import experiments.training.kinds")
    assert violations("experiments.training.fake", "from experiments.inference import loading")
    assert violations("experiments.tracking", "from experiments.data.cache import default_cache_dir")
    assert violations("experiments.data.fake", "from experiments import tracking")
    assert violations("experiments.data.fake", "import mlflow")
    assert violations("detectors.fake", "from experiments.errors import UserError")
    assert violations("features.fake", "from detectors.base import Detector")
    assert violations("experiments.bench.fake", "from experiments.tasks.train import train")
    assert violations("experiments.errors", "from experiments.process import project_root")
    assert violations("experiments", "from experiments import tracking")
    assert violations("experiments.data.layouts.fake", "from ...training import kinds")  # a relative one
    # and lets the allowed ones through
    assert not violations("experiments.training.fake", "from experiments.evaluation.metrics import m\nimport torch")
    assert not violations("experiments.inference.fake", "from experiments.training.builders import build")
    assert not violations("experiments.tasks.fake", "from experiments.inference import x\nimport mlflow")
    assert not violations("experiments.data.fake", "from experiments.errors import UserError\nimport features")
    # the graph checks
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert upward_edges({"features": {"detectors"}, "detectors": set()}) == ["features -> detectors"]
    assert upward_edges({"experiments.errors": {"experiments.tracking"}}) == [
        "experiments.errors -> experiments.tracking"]
    # the parser reads what the table says
    table = ("| floor | package | may import | never imports |\n|---:|---|---|---|\n"
             "| 1 | `b` | every floor below | `mlflow` |\n| 0 | `a` | nothing | |\n\nafter\n")
    rules = parse_import_table(table)
    assert rules["b"] == Row(1, "b", frozenset({"a"}), frozenset({"mlflow"}))
    assert rules["a"].may_import == frozenset()


def test_experiments_top_level_stays_small():
    top = sorted(p.name for p in (ROOT / "experiments").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 5, top


# -- one way to choose, objects instead of configs, small files ----------------------------------------------
def source_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_no_string_switch_on_the_model_family():
    for path in source_files(*PACKAGES):
        assert "family ==" not in path.read_text(), path


STRING_TABLES = re.compile(r"LAYOUTS|LAYOUT_CONFIGS|WEIGHT_CHECKS|_CALIBRATORS|LEGACY_FAMILIES")


def test_no_string_table_chooses_an_object():
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in source_files("experiments", "detectors")
             for i, line in enumerate(p.read_text().splitlines(), 1) if STRING_TABLES.search(line)]
    assert not found, "objects are chosen by _target_, not by a string table:\n" + "\n".join(found)


LIBRARY = ("experiments/training", "experiments/evaluation", "experiments/data", "experiments/inference",
           "detectors", "features")
#: the builders: a run's composed config (training) and a trained run's saved config (inference) become objects
READS_THE_CONFIG = {"experiments/training/builders.py", "experiments/inference/loading.py"}


def test_library_code_takes_no_composed_config():
    found = [p.relative_to(ROOT).as_posix() for p in source_files(*LIBRARY) if "DictConfig" in p.read_text()]
    found = sorted(set(found) - READS_THE_CONFIG)
    assert not found, f"library code takes objects and small settings, not a DictConfig: {found}"


def test_no_source_file_is_too_long():
    files = [ROOT / "run.py", *source_files(*PACKAGES)]
    long = {p.relative_to(ROOT).as_posix(): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern (at most {MAX_LINES} lines): {long}"


def test_the_file_checks_can_fail():
    assert STRING_TABLES.search("LAYOUTS = {'genimage': scan_genimage}")
    assert STRING_TABLES.search("_CALIBRATORS[name]")
    assert not STRING_TABLES.search("layout: ${data.layout}")


#: the source packages whose tests live in a folder of the same name under tests/
MIRRORED = {"features": "features", "detectors": "detectors", "experiments/data": "data",
            "experiments/evaluation": "evaluation", "experiments/training": "training",
            "experiments/inference": "inference", "experiments/tasks": "tasks", "experiments/bench": "bench",
            "hydra_plugins": "hydra_plugins"}
#: whole-project and ground-floor tests (tracking store, server, process settings, the wheel) stay at the top of tests/
TOP_LEVEL_TESTS = {"test_layers.py", "test_huge_pages.py", "test_mlflow_server.py", "test_tracking_store.py",
                   "test_ui_screenshot.py", "test_progress.py", "test_packaging.py"}


def test_tests_mirror_the_source_tree():
    for source, folder in MIRRORED.items():
        assert (ROOT / source).is_dir(), source
        found = sorted((ROOT / "tests" / folder).glob("test_*.py"))
        assert found, f"tests/{folder}/ holds no test of {source}/"
        assert (ROOT / "tests" / folder / "__init__.py").is_file(), f"tests/{folder}/ needs an __init__.py"
    top = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    assert top <= TOP_LEVEL_TESTS, f"tests/{sorted(top - TOP_LEVEL_TESTS)} belong in the folder of what they test"
