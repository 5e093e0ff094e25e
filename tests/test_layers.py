"""The architecture stays visible: no module imports from a layer above its own."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fedseg"
LAYERS = [
    {"types", "seeding", "errors", "files", "tables"},
    {"data", "models", "privacy"},
    {"training"},
    {"plans"},
    {"runtime"},
    {"evaluation", "report"},
    {"experiment", "arms", "study", "simulate", "deployment", "consortium", "compare", "demo", "console", "cli",
     "cli_deployment", "sweep", "sweep_report", "deployed_arms", "external", "external_deployment", "predict",
     "predictor", "cli_predict", "cli_pacs"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def top_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


IMPORT_PATH = re.compile(r"fedseg\.(\w+)(\.\w+)*(:\w+)?")
"""A string that names a module, class or function to import (``fedseg.x.y.Class``, ``fedseg.x:f``)."""


def fedseg_imports(path: Path) -> set[str]:
    """Layers a module imports, including names it would resolve by string (a job or settings
    naming ``fedseg.deployment.Coordinator`` is an import of that module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        named = isinstance(node, ast.Constant) and isinstance(node.value, str) and IMPORT_PATH.fullmatch(node.value)
        if named and named.group(1) in LAYER_OF:  # not "fedseg.json", a file name
            found.add(named.group(1))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedseg."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("fedseg."))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_belongs_to_a_layer():
    assert {top_name(p) for p in MODULES} <= LAYER_OF.keys()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports(path):
    own = LAYER_OF[top_name(path)]
    upward = {name for name in fedseg_imports(path) if LAYER_OF[name] > own}
    assert not upward, f"{path.name} (layer {own}) imports from higher layers: {upward}"


def test_compute_plans_are_pure_numpy():
    for path in (PACKAGE / "plans").rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        heavy = {m for m in modules if m.split(".")[0] in ("torch", "monai", "socket", "nvflare")}
        assert not heavy, f"{path.name} imports {heavy}"
        assert fedseg_imports(path) <= {"types", "seeding", "plans"}, path.name


def test_only_the_flare_adapter_imports_nvflare():
    adapter = PACKAGE / "runtime" / "flare"
    for path in MODULES:
        if adapter in path.parents:
            continue
        tree = ast.parse(path.read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n.split(".")[0] == "nvflare"], path


def test_a_name_resolved_by_string_counts_as_an_import(tmp_path):
    module = tmp_path / "lower.py"
    module.write_text('"""Docs may say fedseg.deployment freely."""\nFACTORY = "fedseg.deployment:coordinator_app"\n')
    assert fedseg_imports(module) == {"deployment"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_260_lines(path):
    assert len(path.read_text().splitlines()) <= 260, f"{path.name}: split it along a concept"
