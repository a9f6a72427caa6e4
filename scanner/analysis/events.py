"""What the weight analysis concludes: a class per tensor, events spanning tensors."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Verdict:
    """The class of one changed tensor and the figures behind it."""

    name: str
    cls: str
    kind: str
    evidence: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One detection spanning one or more tensors (a chain, a shared direction ...)."""

    cls: str
    kind: str
    tensors: tuple[str, ...]
    message: str
    evidence: dict[str, object] = field(default_factory=dict)
    channels: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Tensor -> output channels / rows involved (for locations)."""
    columns: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Tensor -> input columns involved, when the region is a set of columns."""
