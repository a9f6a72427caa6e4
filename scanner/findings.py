"""Findings: what a check reports, with a stable rule id, a severity and locations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Severity(IntEnum):
    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown severity {text!r}; choose one of {names}") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Region:
    """Where inside a tensor: indices along one axis, or a block of index ranges."""

    axis: int | None = None
    indices: tuple[int, ...] = ()
    block: tuple[tuple[int, int], ...] = ()
    """Half-open ``(start, stop)`` ranges, one per axis, of a changed block."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.axis is not None:
            out["axis"] = self.axis
            out["indices"] = list(self.indices)
        if self.block:
            out["block"] = [list(r) for r in self.block]
        return out


@dataclass(frozen=True)
class Location:
    artifact: str | None = None
    """``trusted`` or ``deployed`` for pair checks; ``None`` for a single artifact."""
    tensor: str | None = None
    node: str | None = None
    file: str | None = None
    region: Region | None = None
    offset: int | None = None
    """A byte offset inside ``file`` (for findings about raw file structure)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("artifact", "tensor", "node", "file", "offset"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.region is not None:
            out["region"] = self.region.to_dict()
        return out


@dataclass(frozen=True)
class Finding:
    rule_id: str
    severity: Severity
    title: str
    message: str
    locations: tuple[Location, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "severity": str(self.severity),
            "title": self.title,
            "message": self.message,
            "locations": [loc.to_dict() for loc in self.locations],
            "evidence": dict(self.evidence),
        }
