"""Lists that used to be kept in sync by hand now come from one source; these tests say so."""

from __future__ import annotations

import ast
import re

from app.core import errors
from app.core.spec import PRESETS, JobSpec, layer_tags
from tests.harness import ROOT
from tests.specs import tiny_spec


def test_union_tags_in_error_paths_are_the_layer_union() -> None:
    assert layer_tags() == errors._LAYER_TAGS
    # A layer type added to the union is stripped from error paths with no other edit.
    bad = tiny_spec(model={"layers": [{"type": "residual", "filters": 0}]})
    try:
        JobSpec.model_validate(bad)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError
        paths = [p["path"] for p in errors.validation_problems(exc.errors())]  # type: ignore[attr-defined]
    assert "model.layers[0].filters" in paths


def test_readme_lists_exactly_the_presets() -> None:
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `model.preset`"))
    listed = tuple(re.findall(r"`([a-z0-9_]+)`", row.split("|")[2].split("(")[0]))
    assert listed == PRESETS


def test_every_preset_is_built_by_the_worker() -> None:
    source = (ROOT / "app" / "core" / "modelspec.py").read_text()
    built = {node.comparators[0].value for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
             and node.left.id == "name" and isinstance(node.comparators[0], ast.Constant)}
    assert set(PRESETS) <= built


def test_bench_does_not_import_tests() -> None:
    for path in (ROOT / "bench").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "tests" or n.startswith("tests.") for n in names), path
