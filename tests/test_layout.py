"""The package layout shows the architecture, and the layering holds: no import reaches up a layer.

Layers, lowest first: resources; engine and analysis (side by side, neither imports the other); claimkit (the
claim logic); report; plugin. The seed claims (`claims/`) sit above all of them and use the public API.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "harness"
RANK = {"resources": 0, "engine": 1, "analysis": 1, "claimkit": 2, "report": 3, "plugin": 4}
PEERS_APART = {("engine", "analysis"), ("analysis", "engine")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "harness" and parts[1] in RANK else None


def harness_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("harness")]


MODULES = sorted(p for p in HARNESS.rglob("*.py") if layer_of("harness." + p.relative_to(HARNESS).parts[0]))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(HARNESS)))
def test_no_import_reaches_up_a_layer(path: Path) -> None:
    here = path.relative_to(HARNESS).parts[0]
    bad = [f"{path.relative_to(HARNESS)}:{line} imports {name}" for line, name in harness_imports(path)
           if (there := layer_of(name)) is not None
           and (RANK[there] > RANK[here] or (here, there) in PEERS_APART)]
    assert not bad, bad


def test_every_layer_is_a_subpackage_with_modules() -> None:
    for layer in RANK:
        target = HARNESS / layer
        assert (target / "__init__.py").is_file() or (HARNESS / f"{layer}.py").is_file(), layer


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from harness.report.document import Report\nimport harness.plugin\n", encoding="utf-8")
    names = [name for _, name in harness_imports(module)]
    assert names == ["harness.report.document", "harness.plugin"]
    assert RANK[layer_of(names[0]) or ""] > RANK["engine"]


def test_nothing_in_the_package_imports_the_public_api() -> None:
    """harness.api re-exports the layers for claim authors; the layers never depend on it."""
    bad = [f"{path.relative_to(HARNESS)}:{line}" for path in HARNESS.rglob("*.py") if path.name != "api.py"
           for line, name in harness_imports(path) if name == "harness.api"]
    assert not bad, bad
