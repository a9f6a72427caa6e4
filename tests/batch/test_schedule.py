"""The scheduler's deadlines, on engines whose workers start late, never, or run long."""

from __future__ import annotations

import time
from typing import Any

import pytest

from scanner.batch.engine import Lost, Outcome, Task, schedule
from signing.errors import ModelsealError


class _Engine:
    """One slot; its worker is ready ``start_delay`` seconds after each (re)start (never
    when None) and takes ``run_seconds`` per task."""

    name = "test"

    def __init__(self, start_delay: float | None, run_seconds: float = 0.0) -> None:
        self.start_delay = start_delay
        self.run_seconds = run_seconds
        self.started_at = 0.0
        self.running: tuple[Task, float] | None = None
        self.closed = False

    def start(self) -> None:
        self.started_at = time.monotonic()

    def _ready(self) -> bool:
        if self.start_delay is None:
            return False
        return time.monotonic() - self.started_at >= self.start_delay

    def ready_slots(self) -> list[int]:
        return [0] if self._ready() and self.running is None else []

    def submit(self, slot: int, task: Task) -> None:
        self.running = (task, time.monotonic())

    def wait(self, timeout: float | None) -> list[tuple[int, Outcome]]:
        limit = time.monotonic() + (timeout if timeout is not None else 3600.0)
        while time.monotonic() < limit:
            if self.running is not None:
                task, since = self.running
                if time.monotonic() - since >= self.run_seconds:
                    self.running = None
                    return [(0, {"id": task["id"]})]
            elif self._ready():
                return []
            time.sleep(0.01)
        return []

    def worker_of(self, slot: int) -> str | None:
        return None

    def replace(self, slot: int) -> None:
        self.running = None
        self.started_at = time.monotonic()

    def close(self) -> None:
        self.closed = True


def _run(engine: _Engine, n: int, **kw: Any) -> list[Any]:
    got: list[Any] = []
    schedule(engine, [{"id": i} for i in range(n)], lambda t, o: got.append(o), **kw)
    return got


def test_workers_that_never_start_stop_the_batch_with_an_error() -> None:
    engine = _Engine(start_delay=None)
    started = time.monotonic()
    with pytest.raises(ModelsealError, match=r"no test worker became ready in 0.3 s with 3 jobs"):
        _run(engine, 3, start_timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert engine.closed


def test_a_worker_that_starts_late_runs_every_job() -> None:
    got = _run(_Engine(start_delay=0.2), 3, start_timeout=2.0)
    assert [o["id"] for o in got] == [0, 1, 2]


def test_the_start_deadline_does_not_count_while_a_job_runs() -> None:
    """A job running longer than the start deadline is the job timeout's business."""
    got = _run(_Engine(start_delay=0.0, run_seconds=0.5), 2, start_timeout=0.2)
    assert [o["id"] for o in got] == [0, 1]


def test_a_restart_after_a_timeout_gets_the_start_deadline_again() -> None:
    """The worker of a timed-out job is replaced; a replacement that never comes up
    stops the batch instead of hanging it (the timed-out job was delivered first)."""
    engine = _Engine(start_delay=0.0, run_seconds=10.0)
    got: list[Any] = []

    def never_again(slot: int) -> None:
        engine.running = None
        engine.start_delay = None

    engine.replace = never_again  # type: ignore[method-assign]
    with pytest.raises(ModelsealError, match="no test worker became ready"):
        schedule(
            engine,
            [{"id": 0}, {"id": 1}],
            lambda t, o: got.append(o),
            timeout=0.2,
            start_timeout=0.3,
        )
    assert len(got) == 1 and isinstance(got[0], Lost) and got[0].timed_out
