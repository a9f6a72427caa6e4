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


class ScaledProgress:
    """Shows work in the units the user knows: when a task reads the model's bytes more
    than once (file hashes, then tensor digests), ``total`` is the model's size and every
    advance is scaled down by how many bytes the work reads in all."""

    def __init__(self, inner: Progress, shown_total: int, work_total: int) -> None:
        self._inner = inner
        self._shown = shown_total
        self._work = max(work_total, 1)
        self._done_work = 0
        self._done_shown = 0
        self._lock = threading.Lock()

    def start(self, total: int, description: str) -> None:
        self._inner.start(self._shown, description)

    def advance(self, amount: int) -> None:
        # Integer arithmetic: when all the work is done, exactly ``shown_total`` was shown.
        with self._lock:
            self._done_work += amount
            shown = min(self._done_work, self._work) * self._shown // self._work
            step, self._done_shown = shown - self._done_shown, shown
        if step:
            self._inner.advance(step)

    def finish(self) -> None:
        self._inner.finish()
