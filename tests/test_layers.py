"""The layers stay honest: every module imports, and no package imports a layer above it.

conf -> run.py -> experiments/tasks -> experiments/{training, evaluation, data, bench} -> detectors -> features
(docs/architecture.md). Checked on the import statements themselves, so a lazy import inside a function
counts as much as one at the top.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "detectors", "experiments")

#: package (or module prefix) -> prefixes it must not import
FORBIDDEN = {
    "features": ("detectors", "experiments"),
    "detectors": ("experiments",),
    "experiments.training": ("experiments.tasks",),
    "experiments.evaluation": ("experiments.tasks",),
    "experiments.data": ("experiments.tasks", "experiments.training", "experiments.evaluation"),
    "experiments.bench": ("experiments.tasks",),
    "experiments.tracking": ("experiments.tasks", "experiments.training", "experiments.evaluation"),
    "experiments.runs": ("experiments.tasks", "experiments.training", "experiments.evaluation"),
    "experiments.safe_paths": ("experiments.tasks", "experiments.training", "experiments.evaluation"),
    "experiments.process": ("experiments.",),
    "experiments.errors": ("experiments.",),
}


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imported_modules(module: str) -> set[str]:
    """Every module an import statement of ``module`` names (absolute imports; the suite uses no relative ones)."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def rule_for(module: str) -> tuple[str, ...]:
    matches = [prefix for prefix in FORBIDDEN if module == prefix or module.startswith(prefix + ".")]
    return FORBIDDEN[max(matches, key=len)] if matches else ()


@pytest.mark.parametrize("module", module_names())
def test_every_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("module", module_names())
def test_no_module_imports_a_layer_above_it(module):
    forbidden = rule_for(module)
    bad = sorted(m for m in imported_modules(module) if any(m == f or m.startswith(f.rstrip(".") + ".")
                                                            or (f.endswith(".") and m.startswith(f))
                                                            for f in forbidden))
    assert not bad, f"{module} imports {bad}, a layer above it (see docs/architecture.md)"


def test_the_rules_can_fail():
    assert rule_for("features.spectrum") == ("detectors", "experiments")
    assert rule_for("experiments.data.audit") == FORBIDDEN["experiments.data"]
    assert any(m.startswith("experiments.training") for m in imported_modules("experiments.tasks.train"))


def test_experiments_top_level_stays_small():
    top = sorted(p.name for p in (ROOT / "experiments").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 5, top


def test_no_string_switch_on_the_model_family():
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            assert "family ==" not in path.read_text(), path
