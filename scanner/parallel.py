"""Run independent I/O-and-hash work on every core.

hashlib and numpy release the GIL on large buffers, so threads give real parallelism
here without copying tensors between processes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


def default_workers() -> int:
    env = os.environ.get("MODELSEAL_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def run_parallel(
    jobs: Iterable[tuple[int, Callable[[], T]]],
    workers: int | None = None,
    budget: int | None = None,
) -> list[T]:
    """Run ``(cost, job)`` pairs, largest cost first, and return results in input order.

    With a ``budget``, a job starts only while the costs of the jobs running with it stay
    within the budget (a job alone always runs): when cost is the memory a job holds,
    peak memory stays near the budget however many cores there are.
    """
    indexed = list(enumerate(jobs))
    workers = workers or default_workers()
    if workers == 1 or len(indexed) <= 1:
        return [job() for _, (_, job) in indexed]
    results: list[T | None] = [None] * len(indexed)
    queue = iter(sorted(indexed, key=lambda item: -item[1][0]))
    lock = threading.Lock()
    errors: list[BaseException] = []
    gate = _Budget(budget) if budget is not None else None

    def lane() -> None:
        # One lane per worker takes the next job until none is left: thousands of small
        # jobs (one per tensor) cost a loop turn each, not a future and a wake-up.
        while True:
            with lock:
                item = None if errors else next(queue, None)
            if item is None:
                return
            i, (cost, job) = item
            try:
                results[i] = gate.run(cost, job) if gate else job()
            except BaseException as exc:  # re-raised below, once every lane has stopped
                with lock:
                    errors.append(exc)
                return

    with ThreadPoolExecutor(max_workers=min(workers, len(indexed))) as pool:
        for lane_done in [pool.submit(lane) for _ in range(min(workers, len(indexed)))]:
            lane_done.result()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


def map_values(
    fn: Callable[[V], T],
    items: Mapping[K, V],
    cost: Callable[[V], int] | None = None,
    budget: int | None = None,
) -> dict[K, T]:
    """``{key: fn(value)}`` for every item, computed with :func:`run_parallel` (largest
    ``cost`` first, within ``budget``), in the mapping's order."""
    keys = list(items)
    jobs = [(cost(items[k]) if cost else 1, partial(fn, items[k])) for k in keys]
    return dict(zip(keys, run_parallel(jobs, budget=budget), strict=True))


class _Budget:
    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._running = 0
        self._cond = threading.Condition()

    def run(self, cost: int, job: Callable[[], T]) -> T:
        with self._cond:
            self._cond.wait_for(lambda: not self._running or self._running + cost <= self._budget)
            self._running += cost
        try:
            return job()
        finally:
            with self._cond:
                self._running -= cost
                self._cond.notify_all()
