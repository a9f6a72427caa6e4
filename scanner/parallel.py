"""Run independent I/O-and-hash work on every core.

hashlib and numpy release the GIL on large buffers, so threads give real parallelism
here without copying tensors between processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def default_workers() -> int:
    env = os.environ.get("MODELSEAL_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def run_parallel(
    jobs: Iterable[tuple[int, Callable[[], T]]], workers: int | None = None
) -> list[T]:
    """Run ``(cost, job)`` pairs, largest cost first, and return results in input order."""
    indexed = list(enumerate(jobs))
    workers = workers or default_workers()
    if workers == 1 or len(indexed) <= 1:
        return [job() for _, (_, job) in indexed]
    results: list[T | None] = [None] * len(indexed)
    order = sorted(indexed, key=lambda item: -item[1][0])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(job): i for i, (_, job) in order}
        for future, i in futures.items():
            results[i] = future.result()
    return results  # type: ignore[return-value]
