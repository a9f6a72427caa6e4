"""The fallback fuzzer where atheris is not installed: hypothesis byte strategies.

Inputs are either arbitrary bytes or a seed with byte-level edits (flip, overwrite with
boundary values, truncate, splice), which reach far deeper into a format than random
bytes. Runs in chunks until the time budget is spent.
"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import make_target, seeds

_BOUNDARY = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff" * 8, b"\x00" * 8, b"\x00\x00\x00\x40"]


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            chunk = draw(st.sampled_from(_BOUNDARY))
            data[pos : pos + len(chunk)] = chunk
        elif op == 2:
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def fuzz_for(name: str, seconds: float) -> int:
    """Fuzz ``name`` for ``seconds``; returns the number of executions. Raises on a bug."""
    target = make_target(name)
    pool = [s for s in seeds(name) if len(s) <= 1 << 20] or [b""]
    count = 0

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(st.binary(max_size=512), mutated(pool)))
    def run(data: bytes) -> None:
        nonlocal count
        count += 1
        target(data)

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        run()
    return count
