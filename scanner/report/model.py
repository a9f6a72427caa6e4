"""The report every command produces, whatever the output format."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scanner import __version__
from scanner.artifact import Artifact
from scanner.diff.model import TensorDiff, TensorStatus
from scanner.findings import Finding, Location, Severity

REPORT_SCHEMA = "modelseal/report/v1"


@dataclass(frozen=True)
class ArtifactSummary:
    role: str
    """``trusted``, ``deployed`` or ``scanned``."""
    path: str
    root: str
    format: str
    files: int
    tensors: int
    tensor_bytes: int

    @classmethod
    def of(cls, role: str, artifact: Artifact) -> ArtifactSummary:
        return cls(
            role=role,
            path=str(artifact.path),
            root=str(artifact.root),
            format=artifact.format,
            files=len(artifact.files),
            tensors=len(artifact.tensors),
            tensor_bytes=artifact.total_tensor_bytes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "path": self.path,
            "format": self.format,
            "files": self.files,
            "tensors": self.tensors,
            "tensor_bytes": self.tensor_bytes,
        }


@dataclass(frozen=True)
class Report:
    command: str
    artifacts: tuple[ArtifactSummary, ...]
    findings: tuple[Finding, ...]
    fail_on: Severity = Severity.MEDIUM
    tensors: tuple[TensorDiff, ...] = ()
    classification: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    """Set when the command could not complete; the verdict is then ``error``."""

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "error"
        return "fail" if self.failing() else "pass"

    def failing(self) -> list[Finding]:
        return [f for f in self.findings if f.severity >= self.fail_on]

    def artifact(self, role: str) -> ArtifactSummary | None:
        return next((a for a in self.artifacts if a.role == role), None)

    def summary(self) -> dict[str, Any]:
        statuses = Counter(t.status.value for t in self.tensors)
        severities = Counter(str(f.severity) for f in self.findings)
        return {
            "tensors": dict(sorted(statuses.items())),
            "findings": {str(s): severities.get(str(s), 0) for s in Severity},
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": REPORT_SCHEMA,
            "tool": {"name": "modelseal", "version": __version__},
            "command": self.command,
            "verdict": self.verdict,
            "fail_on": str(self.fail_on),
            "classification": self.classification,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "summary": self.summary(),
            "findings": [f.to_dict() for f in self.findings],
            "tensors": [t.to_dict() for t in self.tensors],
            "evidence": dict(self.evidence),
            "seconds": round(self.seconds, 3),
        }
        if self.error is not None:
            out["error"] = self.error
        return json_safe(out)


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def with_files(finding: Finding, artifacts: Mapping[str, Artifact]) -> Finding:
    """Fill each tensor location's ``file`` from the artifact that holds the tensor."""
    locations = []
    for loc in finding.locations:
        art = artifacts.get(loc.artifact or "scanned")
        if loc.file is None and loc.tensor is not None and art is not None:
            info = art.tensors.get(loc.tensor)
            if info is not None and info.file:
                loc = replace(loc, file=info.file)
        locations.append(loc)
    return replace(finding, locations=tuple(locations))


def file_uri(report: Report, loc: Location) -> str | None:
    """Path of a location's file as the user can open it (artifact root + file)."""
    summary = report.artifact(loc.artifact or "scanned") or (
        report.artifacts[0] if report.artifacts else None
    )
    if summary is None:
        return None
    if loc.file is None:
        return summary.path
    root = Path(summary.root)
    return str(root / loc.file)


def changed_tensors(report: Report) -> list[TensorDiff]:
    return [t for t in report.tensors if t.status is not TensorStatus.IDENTICAL]
