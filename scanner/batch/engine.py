"""Engines run jobs on worker slots; :func:`schedule` feeds them and enforces timeouts.

An engine owns a fixed number of slots, each a worker that runs one task at a time (a
local process, a Ray actor). The scheduler gives each ready slot a task, waits for
results, and when a task runs past the timeout or its worker dies, has the engine
replace that worker: the job is reported as lost and the batch goes on. The engine
alone knows how workers are started, watched and killed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from signing.errors import ModelsealError

WORKER_START_SECONDS = 600.0
"""How long a batch waits, with no job running, for a worker to become ready (a Ray
cluster that has no node with the CPUs a worker reserves would otherwise be waited on
forever)."""


@dataclass(frozen=True)
class Lost:
    """A task that returned no result: its worker died or was stopped."""

    message: str
    timed_out: bool = False
    worker: str | None = None
    seconds: float = 0.0
    """How long the task had been running."""


Outcome = dict[str, Any] | Lost
Task = Mapping[str, Any]


class Engine(Protocol):
    name: str

    def start(self) -> None:
        """Start the workers (they may become ready later)."""
        ...

    def ready_slots(self) -> list[int]:
        """Slots whose worker is up and idle."""
        ...

    def submit(self, slot: int, task: Task) -> None: ...

    def wait(self, timeout: float | None) -> list[tuple[int, Outcome]]:
        """Wait up to ``timeout`` seconds (``None``: no limit) for finished tasks; return
        early, possibly with nothing, when a slot becomes ready. Raises
        :class:`~signing.errors.ModelsealError` when workers cannot start at all."""
        ...

    def worker_of(self, slot: int) -> str | None:
        """Where the slot's worker runs (``host:pid``), when known."""
        ...

    def replace(self, slot: int) -> None:
        """Kill the slot's worker, if alive, and start a fresh one."""
        ...

    def close(self) -> None: ...


def schedule(
    engine: Engine,
    tasks: Iterable[Task],
    deliver: Callable[[Task, Outcome], None],
    *,
    timeout: float | None = None,
    start_timeout: float | None = WORKER_START_SECONDS,
) -> None:
    """Run every task on ``engine`` and hand each outcome to ``deliver``, in the order
    they finish. A task running longer than ``timeout`` seconds is lost with
    ``timed_out`` set; its worker is replaced. When no task is running and no worker
    becomes ready for ``start_timeout`` seconds, the batch stops with
    :class:`~signing.errors.ModelsealError` (the results delivered so far are kept)."""
    pending = deque(tasks)
    busy: dict[int, tuple[Task, float]] = {}
    idle_since: float | None = None
    engine.start()
    try:
        while pending or busy:
            for slot in engine.ready_slots():
                if not pending:
                    break
                if slot in busy:
                    continue
                task = pending.popleft()
                engine.submit(slot, task)
                busy[slot] = (task, time.monotonic())
            if busy:
                idle_since = None
                wait_for = _until_first_deadline(busy, timeout)
            else:
                # Tasks are pending and every worker is still starting (or restarting).
                idle_since = time.monotonic() if idle_since is None else idle_since
                wait_for = _start_deadline(engine, idle_since, start_timeout, len(pending))
            for slot, outcome in engine.wait(wait_for):
                task, started = busy.pop(slot)
                if isinstance(outcome, Lost):
                    engine.replace(slot)
                    outcome = replace(outcome, seconds=time.monotonic() - started)
                deliver(task, outcome)
            if timeout is not None:
                now = time.monotonic()
                for slot, (task, started) in list(busy.items()):
                    if now - started >= timeout:
                        worker = engine.worker_of(slot)
                        del busy[slot]
                        engine.replace(slot)
                        deliver(
                            task,
                            Lost(
                                f"timed out after {timeout:g} s; its worker was stopped",
                                timed_out=True,
                                worker=worker,
                                seconds=now - started,
                            ),
                        )
    finally:
        engine.close()


def _start_deadline(
    engine: Engine, idle_since: float, start_timeout: float | None, pending: int
) -> float | None:
    if start_timeout is None:
        return None
    left = idle_since + start_timeout - time.monotonic()
    if left <= 0:
        raise ModelsealError(
            f"no {engine.name} worker became ready in {start_timeout:g} s with {pending} "
            "jobs waiting: the workers cannot start or the cluster has no room for one "
            "(on Ray, a node with --cpus-per-job free CPUs); see docs/batch.md"
        )
    return left


def _until_first_deadline(
    busy: Mapping[int, tuple[Task, float]], timeout: float | None
) -> float | None:
    if timeout is None or not busy:
        return None
    first = min(started for _, started in busy.values()) + timeout
    return max(0.0, first - time.monotonic())
