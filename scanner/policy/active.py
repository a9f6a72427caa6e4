"""The rules pack in force for this process, so checks can read their thresholds.

Checks call :func:`threshold` with the default they would use anyway; without an active
pack (library use, tests) they get exactly that default. The CLI activates the pack
named by ``--rules``; library callers use :func:`using`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from scanner.policy.pack import Pack

# A plain module global, not a ContextVar: analyzers fan work out to thread pools, and
# worker threads do not inherit context variables.
_lock = threading.Lock()
_active: Pack | None = None


def active_pack() -> Pack | None:
    return _active


def activate(pack: Pack | None) -> None:
    """Make ``pack`` the active pack (``None``: none)."""
    global _active
    with _lock:
        _active = pack


@contextlib.contextmanager
def using(pack: Pack | None) -> Iterator[Pack | None]:
    """Activate ``pack`` for the duration of a ``with`` block."""
    previous = _active
    activate(pack)
    try:
        yield pack
    finally:
        activate(previous)


def threshold(
    rule_id: str, key: str, default: Any, options: Mapping[str, Any] | None = None
) -> Any:
    """Threshold ``key`` of ``rule_id``: from ``options["policy"]`` when given, else the
    active pack, else ``default``."""
    pack = (options or {}).get("policy") or _active
    if not isinstance(pack, Pack):
        return default
    return pack.threshold(rule_id, key, default)
