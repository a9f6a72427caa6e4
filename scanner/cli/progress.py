"""A rich progress bar on stderr that appears only once work has lasted over a second.

The only module that imports rich's live display; the library reports through the
:class:`scanner.progress.Progress` protocol.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from scanner.progress import NoProgress
from scanner.progress import Progress as ProgressProtocol

SHOW_AFTER_SECONDS = 1.0


class DelayedBar:
    def __init__(self, console: Any = None) -> None:
        self._console = console
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: int | None = None
        self._total = 0
        self._done = 0
        self._description = ""
        self._started = 0.0

    def start(self, total: int, description: str) -> None:
        with self._lock:
            self._close()
            self._total, self._done, self._description = total, 0, description
            self._started = time.monotonic()

    def advance(self, amount: int) -> None:
        with self._lock:
            self._done += amount
            if self._bar is None and time.monotonic() - self._started > SHOW_AFTER_SECONDS:
                # rich is imported only once a bar is due: short commands never load it.
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )

                self._bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=self._console or Console(stderr=True),
                    transient=True,
                )
                self._bar.start()
                self._task = self._bar.add_task(self._description, total=self._total)
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, completed=self._done)

    def finish(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None


def progress_for(quiet: bool) -> ProgressProtocol:
    """A bar on an interactive stderr, nothing otherwise (pipes, CI logs, --quiet)."""
    if quiet or not sys.stderr.isatty():
        return NoProgress()
    return DelayedBar()
