"""Each reader survives a bounded fuzzing run (CI budget: ``MODELSEAL_FUZZ_SECONDS``)."""

from __future__ import annotations

import pytest

from tests.fuzz import run
from tests.fuzz.harness import make_target, seeds

RESULTS: list[run.FuzzResult] = []


@pytest.fixture(scope="module")
def results() -> dict[str, run.FuzzResult]:
    if not RESULTS:
        RESULTS.extend(run.run_all(run.budget()))
    return {r.target: r for r in RESULTS}


@pytest.mark.parametrize("target", run.TARGETS)
def test_target_survives_bounded_fuzzing(target: str, results: dict[str, run.FuzzResult]) -> None:
    r = results[target]
    assert r.executions > 0, r.log_tail
    assert r.ok, (
        f"{target}: fuzzing found a failing input ({r.crash}); save it under "
        f"tests/hostile/corpus/crashes/ with its expected outcome.\n{r.log_tail}"
    )


@pytest.mark.parametrize("target", run.TARGETS)
def test_seeds_pass_the_target(target: str) -> None:
    """The harness itself works: every seed (real fixtures included) runs clean."""
    fn = make_target(target)
    pool = seeds(target)
    assert len(pool) >= 5
    for data in pool:
        fn(data)
