"""Each reader survives a bounded fuzzing run.

The default test run checks that every harness runs its seeds clean; the fuzzing itself
(``MODELSEAL_FUZZ_SECONDS``, default 30 s per target, under atheris when installed) runs
in CI's ``fuzz_long`` step: ``pytest -m fuzz_long tests/fuzz``.
"""

from __future__ import annotations

import pytest

from tests.fuzz import run
from tests.fuzz.harness import make_target, seeds

RESULTS: list[run.FuzzResult] = []


def _check(r: run.FuzzResult) -> None:
    assert r.executions > 0, r.log_tail
    assert r.ok, (
        f"{r.target}: fuzzing found a failing input ({r.crash}); save it under "
        f"tests/hostile/corpus/crashes/ with its expected outcome.\n{r.log_tail}"
    )


@pytest.fixture(scope="module")
def long_results() -> dict[str, run.FuzzResult]:
    results = run.run_all(run.budget())
    RESULTS.extend(results)
    return {r.target: r for r in results}


@pytest.mark.fuzz_long
@pytest.mark.parametrize("target", run.TARGETS)
def test_target_survives_bounded_fuzzing(
    target: str, long_results: dict[str, run.FuzzResult]
) -> None:
    _check(long_results[target])


@pytest.mark.parametrize("target", run.TARGETS)
def test_seeds_pass_the_target(target: str) -> None:
    """The harness itself works: every seed (real fixtures included) runs clean."""
    fn = make_target(target)
    pool = seeds(target)
    assert len(pool) >= 5
    for data in pool:
        fn(data)


def test_fuzzer_peak_rss_does_not_inherit_the_test_process() -> None:
    """libFuzzer's -rss_limit_mb reads the peak RSS, which Linux carries across execve."""
    import subprocess
    import sys

    import numpy as np

    held = np.ones(600 * 2**20 // 8)  # 600 MiB resident in this process
    probe = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run(
        [*run._FRESH_PEAK_RSS, sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert held.sum() > 0
    assert int(out) < 300 * 1024  # KiB: the child's own interpreter, not our 600 MiB
