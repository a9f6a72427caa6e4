"""run_parallel: results in input order; a budget bounds the cost of jobs running at once."""

from __future__ import annotations

import threading
import time

import pytest

from scanner.parallel import run_parallel


def _jobs(costs: list[int], log: dict[str, int], lock: threading.Lock):
    def job(i: int, cost: int):
        def run() -> int:
            with lock:
                log["running"] += cost
                log["peak"] = max(log["peak"], log["running"])
                log["together"] = max(log["together"], log["count"] + 1)
                log["count"] += 1
            time.sleep(0.02)
            with lock:
                log["running"] -= cost
                log["count"] -= 1
            return i

        return run

    return [(c, job(i, c)) for i, c in enumerate(costs)]


def test_results_come_back_in_input_order_and_jobs_overlap() -> None:
    log = {"running": 0, "peak": 0, "count": 0, "together": 0}
    costs = [5, 50, 1, 30, 30, 2, 8, 40]
    assert run_parallel(_jobs(costs, log, threading.Lock()), workers=4) == list(range(8))
    assert log["together"] > 1


def test_a_budget_bounds_the_cost_running_at_once() -> None:
    log = {"running": 0, "peak": 0, "count": 0, "together": 0}
    costs = [60, 50, 40, 30, 20, 10, 10, 10, 120]
    out = run_parallel(_jobs(costs, log, threading.Lock()), workers=4, budget=100)
    assert out == list(range(len(costs)))
    # 120 runs alone; everything else shares the budget.
    assert log["peak"] <= 120
    assert log["together"] > 1
    log = {"running": 0, "peak": 0, "count": 0, "together": 0}
    run_parallel(_jobs(costs[:-1], log, threading.Lock()), workers=4, budget=100)
    assert log["peak"] <= 100


def test_a_failing_job_raises_and_stops_the_jobs_not_yet_started() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def job(i: int):
        def run() -> int:
            with lock:
                started.append(i)
            if i == 3:
                raise ValueError("job 3 failed")
            time.sleep(0.01)
            return i

        return run

    # Largest cost first: job 3 is among the first two to start, of 200.
    jobs = [(1000 if i == 3 else 1, job(i)) for i in range(200)]
    with pytest.raises(ValueError, match="job 3 failed"):
        run_parallel(jobs, workers=2)
    assert started[0] == 3
    assert len(started) < 10


def test_many_small_jobs_on_every_lane() -> None:
    seen: set[int] = set()
    lock = threading.Lock()

    def job(i: int):
        def run() -> int:
            with lock:
                seen.add(threading.get_ident())
            time.sleep(0.001)
            return i * i

        return run

    assert run_parallel([(1, job(i)) for i in range(2000)], workers=3) == [
        i * i for i in range(2000)
    ]
    assert len(seen) == 3
