"""What a caller asks of a diff: claims to re-derive, change classes to allow, probing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DiffOptions:
    claims: tuple[str, ...] = ()
    """Claimed transformations (``quantize:int8:per-channel``, ``cast:fp16`` ...)."""
    allow: tuple[str, ...] = ()
    """Change classes accepted without a claim (``finetune``, ``pruning`` ...)."""
    probe: bool = False
    """Run both graphs on probe inputs (onnxruntime) to compare what they compute."""
    probe_budget: float | None = None
    """Seconds the behavioural probe may take; ``None``: its default."""

    @classmethod
    def of(cls, value: DiffOptions | Mapping[str, Any] | None) -> DiffOptions:
        """Options from a mapping with the same keys (library callers, job files)."""
        if value is None:
            return cls()
        if isinstance(value, DiffOptions):
            return value
        unknown = set(value) - {"claims", "allow", "probe", "probe_budget"}
        if unknown:
            raise TypeError(f"unknown diff options: {', '.join(sorted(unknown))}")
        budget = value.get("probe_budget")
        return cls(
            claims=tuple(str(c) for c in value.get("claims") or ()),
            allow=tuple(str(a) for a in value.get("allow") or ()),
            probe=bool(value.get("probe")),
            probe_budget=None if budget is None else float(budget),
        )
