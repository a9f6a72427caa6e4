"""Progress observers: the library reports work done; the CLI decides how to show it."""

from __future__ import annotations

import threading
from typing import Protocol


class Progress(Protocol):
    def start(self, total: int, description: str) -> None:
        """Begin a task of ``total`` units (bytes)."""
        ...

    def advance(self, amount: int) -> None:
        """Record ``amount`` more units done; may be called from worker threads."""
        ...

    def finish(self) -> None: ...


class NoProgress:
    """The default observer: shows nothing."""

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass


class CountingProgress:
    """Totals what was reported; for tests and benchmarks."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.descriptions: list[str] = []
        self._lock = threading.Lock()

    def start(self, total: int, description: str) -> None:
        self.total += total
        self.descriptions.append(description)

    def advance(self, amount: int) -> None:
        with self._lock:
            self.done += amount

    def finish(self) -> None:
        pass
