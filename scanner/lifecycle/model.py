"""The lifecycle description: a pipeline of steps read from ``lifecycle.toml``.

```toml
[lifecycle]
name = "llm-release"
model = "chat model"

[[step]]
name = "fine-tune"
kind = "fine-tune"          # train, export, convert, cast, quantize, prune, fine-tune,
                            # merge, optimize, deploy
performer = "vendor ML team"
third_party = true          # performed outside the party that owns the trusted model
inputs = ["base.safetensors"]
outputs = ["tuned.safetensors"]
attestation = true          # a signed step attestation is required
format = "safetensors"      # format of the outputs (onnx enables graph checks)
checks = ["pair", "scan"]   # what the gate runs on this step's output
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from scanner.errors import UsageError

STEP_KINDS = (
    "train",
    "export",
    "convert",
    "cast",
    "quantize",
    "prune",
    "fine-tune",
    "merge",
    "optimize",
    "deploy",
)
CHECKS = ("signature", "claim", "pair", "scan", "probe")
"""Evidence the gate can be configured to collect for a step's output."""
FORMATS = ("safetensors", "onnx", "gguf", "pytorch")


class LifecycleError(UsageError):
    """The lifecycle file does not validate (exit 2)."""


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    performer: str
    third_party: bool
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attestation: bool
    format: str
    checks: tuple[str, ...]


@dataclass(frozen=True)
class Lifecycle:
    name: str
    model: str
    steps: tuple[Step, ...]
    source: str = ""


def load_lifecycle(path: Path) -> Lifecycle:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LifecycleError(f"cannot read lifecycle {path}: {exc}") from None
    return parse_lifecycle(data, str(path))


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LifecycleError(f"{where} must be a list of strings")
    return tuple(value)


def parse_lifecycle(data: dict[str, Any], source: str = "") -> Lifecycle:
    """Validate a parsed TOML document; unknown keys are errors (a typo never silently
    drops a required attestation)."""
    head = data.get("lifecycle") or {}
    extra = set(data) - {"lifecycle", "step"}
    if extra:
        raise LifecycleError(f"{source}: unknown top-level table(s) {sorted(extra)}")
    raw_steps = data.get("step")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise LifecycleError(f"{source}: at least one [[step]] is required")
    known = {
        "name",
        "kind",
        "performer",
        "third_party",
        "inputs",
        "outputs",
        "attestation",
        "format",
        "checks",
    }
    steps = []
    for i, raw in enumerate(raw_steps):
        where = f"{source}: step {i + 1}"
        unknown = set(raw) - known
        if unknown:
            raise LifecycleError(f"{where}: unknown key(s) {sorted(unknown)}")
        kind = raw.get("kind")
        if kind not in STEP_KINDS:
            raise LifecycleError(
                f"{where}: kind must be one of {', '.join(STEP_KINDS)}, not {kind!r}"
            )
        checks = _strings(raw.get("checks", []), f"{where}: checks")
        bad = [c for c in checks if c not in CHECKS]
        if bad:
            raise LifecycleError(f"{where}: unknown check(s) {bad}; known: {', '.join(CHECKS)}")
        fmt = raw.get("format", "safetensors")
        if fmt not in FORMATS:
            raise LifecycleError(f"{where}: format must be one of {', '.join(FORMATS)}")
        steps.append(
            Step(
                name=str(raw.get("name") or kind),
                kind=kind,
                performer=str(raw.get("performer", "unspecified")),
                third_party=bool(raw.get("third_party", False)),
                inputs=_strings(raw.get("inputs", []), f"{where}: inputs"),
                outputs=_strings(raw.get("outputs", []), f"{where}: outputs"),
                attestation=bool(raw.get("attestation", False)),
                format=fmt,
                checks=checks,
            )
        )
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise LifecycleError(f"{source}: step names must be unique")
    return Lifecycle(
        str(head.get("name", Path(source).stem if source else "lifecycle")),
        str(head.get("model", "")),
        tuple(steps),
        source,
    )
