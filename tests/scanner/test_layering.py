"""Data flows one way: formats -> diff -> checks -> policy -> report -> entry points.

A module may import its own layer or a lower one, never a higher one, whether the
import sits at the top of the file or inside a function; ``signing`` never imports
``scanner``. docs/architecture.md describes the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Package (the first name under scanner/) -> layer; higher numbers sit above lower ones.
LAYERS = {
    **dict.fromkeys(
        [
            *("errors", "findings", "artifact", "values", "dtypes", "digest", "parallel"),
            *("progress", "lazy", "formats", "manifest", "rulebook", "exit_codes", "allocator"),
        ],
        0,
    ),
    "diff": 1,
    **dict.fromkeys(["analysis", "claims", "graph", "checks", "claims_bridge", "step_inputs"], 2),
    "policy": 3,
    "report": 4,
    **dict.fromkeys(["gate", "batch", "lifecycle", "evaluate", "redteam", "api", "demo"], 5),
    **dict.fromkeys(["cli", "__main__", "__init__"], 6),
}
# The report's data model is what the checks produce and a rules pack judges; the
# renderers beside it in scanner/report sit above the policy layer.
MODULE_LAYERS = {"scanner.report.model": 2}


def _layer(module: str) -> int | None:
    if module in MODULE_LAYERS:
        return MODULE_LAYERS[module]
    parts = module.split(".")
    if parts[0] != "scanner" or len(parts) < 2:
        return None
    return LAYERS[parts[1]]


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_every_scanner_package_has_a_layer() -> None:
    packages = {p.stem if p.is_file() else p.name for p in (ROOT / "scanner").iterdir()}
    packages = {p for p in packages if not p.startswith((".", "_")) or p == "__main__"}
    packages -= {"demo_data", "__pycache__"}
    assert packages <= set(LAYERS), sorted(packages - set(LAYERS))


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in sorted((ROOT / "scanner").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = _layer(module.removesuffix(".__init__"))
        for imported in _imports(path):
            target = _layer(imported)
            if own is not None and target is not None and target > own:
                upward.append(f"{module} -> {imported}")
    assert not upward, upward


def test_signing_never_imports_scanner() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} -> {imported}"
        for path in sorted((ROOT / "signing").rglob("*.py"))
        for imported in _imports(path)
        if imported == "scanner" or imported.startswith("scanner.")
    ]
    assert not offenders, offenders
