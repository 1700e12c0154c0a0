"""The floors of the house: every import points down, never up, so each floor can be read, tested and reused
without the ones above it; rules and reports stay free of torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FLOORS = (
    ("scanner.errors", "scanner.progress", "scanner.findings"),
    ("scanner.inputs",),
    ("scanner.options",),
    ("scanner.model",),
    ("scanner.measure",),
    ("scanner.zoo",),
    ("rules",),
    ("scanner.api",),
    ("scanner.zoo.calibrate",),
    ("reports",),
    ("scanner.cli", "scanner.files", "scanner.__main__"),
)
"""Lowest first. A module may import its own floor and the floors below. ``rules`` sits above the zoo and below
``scanner.api`` because the zoo's calibration (``scanner.zoo.calibrate``) builds its cases; of the scanner it
imports only the findings and the errors."""


def _floor(module: str) -> int | None:
    if module == "scanner":
        return 0  # the package's own __init__: its version and nothing else
    best = None
    for index, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return None if best is None else best[0]


def _modules() -> list[tuple[str, Path]]:
    out = []
    for package in ("scanner", "rules", "reports"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_point_down(module, path):
    own = _floor(module)
    assert own is not None, f"{module} is on no floor: add it to FLOORS"
    upward = [name for name in _imports(path) if (floor := _floor(name)) is not None and floor > own]
    assert not upward, f"{module} (floor {own}) imports from higher floors: {upward}"


@pytest.mark.parametrize(("module", "path"), [(m, p) for m, p in _modules() if m.startswith(("rules", "reports"))])
def test_rules_and_reports_never_import_torch(module, path):
    heavy = [name for name in _imports(path) if name.split(".")[0] in ("torch", "transformers", "peft", "pyvene")]
    assert not heavy, f"{module} imports {heavy}"


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_no_module_is_over_500_lines(module, path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 500, module
