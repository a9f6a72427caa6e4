"""Every command runs with freed buffers kept for reuse (``scanner.allocator``).

Measured by what it is for, in a fresh interpreter: after a command, a chunked loop that
allocates, fills and frees the same buffers again must not fault their pages in again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, resource, sys
import numpy as np
from scanner.cli.main import main
if sys.argv[1] != "-":
    main(sys.argv[1:])

def chunk_loop():
    for _ in range(3):
        bufs = [np.ones(1 << 21, dtype=np.float32) for _ in range(6)]  # 6 x 8 MiB
        del bufs

chunk_loop()  # first touch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
chunk_loop()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults}), file=sys.stderr)
"""

PAGES_PER_ROUND = 6 * (8 << 20) // 4096


def _faults(*argv: str, env: dict[str, str] | None = None) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=True,
    )
    return int(json.loads(proc.stderr.strip().splitlines()[-1])["faults"])


def test_a_command_keeps_freed_buffers_for_reuse() -> None:
    if not sys.platform.startswith("linux"):
        assert _applied({}) == "False"
        return
    # Without the setting, glibc hands most buffers back and faults them in again.
    assert _faults("-") > PAGES_PER_ROUND // 2
    assert _faults("rules", "list") < PAGES_PER_ROUND // 10


def _applied(env: dict[str, str]) -> str:
    probe = "import scanner.allocator as a; print(a.keep_freed_memory())"
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return proc.stdout.strip()


def test_the_users_malloc_settings_win() -> None:
    assert _applied({}) == str(sys.platform.startswith("linux"))
    assert _applied({"MALLOC_TRIM_THRESHOLD_": "1"}) == "False"
