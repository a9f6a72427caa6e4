"""The repository's gate configuration: ``modelseal.toml`` or ``[tool.modelseal]``.

It keeps the CI line short (``modelseal gate``): paths to the artifacts and evidence,
the rules pack, and the repository's suppressions. Paths are relative to the file that
names them. Command-line options win over the file. Unknown keys are errors.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.policy.pack import PackError, Suppression, parse_suppressions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILES = ("modelseal.toml", "pyproject.toml")
_PATH_KEYS = {
    "deployed",
    "trusted",
    "signature",
    "public_key",
    "attestations",
    "chain_policy",
    "output",
    "trust_config",
    "trusted_root",
}
_PATH_LIST_KEYS = {"certificate_chain", "artifacts"}
_STR_KEYS = {"rules", "identity", "issuer", "format", "fail_on"}
_STR_LIST_KEYS = {"claims", "allow"}
_KEYS = _PATH_KEYS | _PATH_LIST_KEYS | _STR_KEYS | _STR_LIST_KEYS | {"suppress"}


@dataclass(frozen=True)
class GateConfig:
    """Settings read from the repository; empty when there is no configuration."""

    source: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    suppressions: tuple[Suppression, ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def find_config(start: Path) -> Path | None:
    """``modelseal.toml``, else a ``pyproject.toml`` with ``[tool.modelseal]``, in
    ``start`` or the nearest parent folder that has one."""
    for folder in (start, *start.parents):
        own = folder / "modelseal.toml"
        if own.is_file():
            return own
        pyproject = folder / "pyproject.toml"
        if (
            pyproject.is_file()
            and "tool" in _read(pyproject)
            and "modelseal" in _read(pyproject)["tool"]
        ):
            return pyproject
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PackError(f"cannot read configuration {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PackError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: Path) -> GateConfig:
    """Read and validate the gate configuration in ``path``."""
    data = _read(path)
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("modelseal")
        if table is None:
            raise PackError(f"{path}: no [tool.modelseal] table")
        where = f"{path} [tool.modelseal]"
    else:
        table, where = data, str(path)
    if not isinstance(table, Mapping):
        raise PackError(f"{where}: expected a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise PackError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_KEYS))})"
        )
    base = path.parent
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "suppress":
            continue
        if key in _PATH_KEYS or key in _STR_KEYS:
            if not isinstance(value, str):
                raise PackError(f"{where}: {key}: expected a string, got {type(value).__name__}")
            values[key] = base / value if key in _PATH_KEYS else value
        else:
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise PackError(f"{where}: {key}: expected an array of strings")
            values[key] = [base / v for v in value] if key in _PATH_LIST_KEYS else list(value)
    rules = values.get("rules")
    if isinstance(rules, str) and (rules.endswith(".toml") or "/" in rules):
        values["rules"] = str(base / rules)
    items = table.get("suppress", [])
    if not isinstance(items, list):
        raise PackError(f"{where}: suppress: expected an array of tables ([[suppress]])")
    return GateConfig(str(path), values, tuple(parse_suppressions(items, where)))
