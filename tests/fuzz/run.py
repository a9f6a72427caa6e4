"""Run every fuzz target for a bounded time and report executions per second.

Default test run (``test_fuzz_bounded.py``): every harness runs its seeds, in process;
no fuzzing.

CI's long step (``pytest -m fuzz_long tests/fuzz``, run by ``.ci/run`` after the default
suite): ``MODELSEAL_FUZZ_SECONDS`` seconds per target (default 30), two targets at a time
on the two cores, so the default budget is 150 target-seconds in about 90 s of wall time;
the total is capped at 240 target-seconds.

Local, longer::

    MODELSEAL_FUZZ_SECONDS=1800 python tests/fuzz/run.py --local

``--local`` lifts the cap and saves each crashing input under
``tests/hostile/corpus/crashes/<target>-<sha8>`` (add a ``.json`` with the expected
outcome, fix the bug, regenerate the corpus, commit both).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGETS = ("pytorch", "pickle_vm", "safetensors", "gguf", "onnx")
DEFAULT_SECONDS = 30
CI_TOTAL_CAP = 240
CRASHES = ROOT / "tests" / "hostile" / "corpus" / "crashes"


@dataclass(frozen=True)
class FuzzResult:
    target: str
    engine: str
    seconds: float
    executions: int
    ok: bool
    crash: str | None
    log_tail: str

    @property
    def per_second(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def engine() -> str:
    return "atheris" if importlib.util.find_spec("atheris") else "hypothesis"


def budget(local: bool = False) -> int:
    """Seconds per target from MODELSEAL_FUZZ_SECONDS, capped in CI."""
    seconds = int(os.environ.get("MODELSEAL_FUZZ_SECONDS", DEFAULT_SECONDS))
    if seconds < 1:
        raise SystemExit("MODELSEAL_FUZZ_SECONDS must be at least 1")
    if not local:
        seconds = min(seconds, CI_TOTAL_CAP // len(TARGETS))
    return seconds


# Linux keeps a process's peak RSS across execve, so a fuzzer started straight from a
# test process that already holds models would inherit that peak and trip libFuzzer's
# -rss_limit_mb at once. A shell that forks before exec gives the fuzzer a fresh count.
_FRESH_PEAK_RSS = ("/bin/sh", "-c", '"$@"; exit $?', "sh")


def run_target(target: str, seconds: int, local: bool = False) -> FuzzResult:
    work = Path(tempfile.mkdtemp(prefix=f"modelseal-fuzz-{target}-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELSEAL_FUZZ_SCRATCH": str(work)}
    kind = engine()
    if kind == "atheris":
        cmd = [
            sys.executable,
            str(HERE / "harness.py"),
            target,
            f"-max_total_time={seconds}",
            "-print_final_stats=1",
            "-timeout=20",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={work}/",
            "-close_fd_mask=1",
        ]
    else:
        cmd = [
            sys.executable,
            str(HERE / "harness.py"),
            target,
            "--hypothesis",
            "--seconds",
            str(seconds),
        ]
    started = time.monotonic()
    proc = subprocess.run(
        [*_FRESH_PEAK_RSS, *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=seconds + 180,
    )
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    if kind == "atheris":
        m = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    else:
        m = re.search(r"(\d+) executions", out)
    executions = int(m.group(1)) if m else 0
    crash = None
    found = sorted(p for p in work.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    if found:
        data = found[0].read_bytes()
        crash = str(found[0])
        if local:
            CRASHES.mkdir(parents=True, exist_ok=True)
            dest = CRASHES / f"{target}-{hashlib.sha256(data).hexdigest()[:8]}"
            shutil.copyfile(found[0], dest)
            crash = str(dest)
    if crash is None or local:
        shutil.rmtree(work, ignore_errors=True)
    return FuzzResult(
        target,
        kind,
        min(elapsed, float(seconds)),
        executions,
        proc.returncode == 0 and not found,
        crash,
        out[-3000:],
    )


def run_all(seconds: int, local: bool = False, workers: int = 2) -> list[FuzzResult]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda t: run_target(t, seconds, local), TARGETS))


def main(argv: list[str]) -> int:
    local = "--local" in argv
    seconds = budget(local)
    print(
        f"fuzz budget: {seconds} s x {len(TARGETS)} targets ({engine()}), 2 at a time "
        "(MODELSEAL_FUZZ_SECONDS)"
    )
    results = run_all(seconds, local)
    for r in results:
        status = "ok" if r.ok else f"FAILED ({r.crash or 'see log'})"
        print(f"  {r.target:12s} {r.executions:9d} execs  {r.per_second:8.0f}/s  {status}")
    print(json.dumps({r.target: round(r.per_second) for r in results}))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
