"""Print the fuzzing budget and speed at the end of the run (CI logs show them)."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.fuzz.run import TARGETS, budget, engine
    from tests.fuzz.test_fuzz_bounded import RESULTS

    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("fuzzing")
    tr.write_line(
        f"{len(TARGETS)} targets, engine {engine()}; long budget {budget()} s per target "
        "(MODELSEAL_FUZZ_SECONDS, `pytest -m fuzz_long tests/fuzz`)"
    )
    for r in RESULTS:
        tr.write_line(
            f"  {r.target:12s} {r.seconds:5.1f} s {r.executions:9d} executions  "
            f"{r.per_second:8.0f}/s  "
            f"{'ok' if r.ok else 'FAILED ' + str(r.crash)}"
        )
