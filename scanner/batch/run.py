"""Run a batch: resume from the result file, schedule the jobs, stream their lines.

Resuming: a job whose latest line in the result file completed (exit code 0 or 1) is sent
with that line's content digest; the worker digests the job's inputs again and, when
nothing changed, the job is skipped and its line kept. Every other job runs. The batch
exit code is the worst of its jobs' (0 pass, 1 policy failure, 2 could not complete).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanner.batch.engine import WORKER_START_SECONDS, Engine, Lost, Outcome, Task, schedule
from scanner.batch.execute import error_line
from scanner.batch.jobs import Job
from scanner.batch.results import ResultLog, write_atomic
from scanner.batch.sarif import batch_sarif
from scanner.batch.trust import Trust, load_trust, spec_digest

SARIF_EVERY_SECONDS = 5.0
"""How often the SARIF file is rewritten while jobs finish (and once at the end)."""

LineObserver = Callable[[Mapping[str, Any], bool], None]
"""Called with each job's line as it is settled, and whether it was skipped."""


@dataclass(frozen=True)
class BatchSummary:
    jobs: int
    ran: int
    skipped: int
    verdicts: Mapping[str, int]
    """``pass`` / ``fail`` / ``error`` -> number of jobs."""
    timed_out: int
    exit_code: int
    seconds: float


def make_task(
    job: Job, trust: Trust, previous: Mapping[str, Any] | None, *, sarif: bool
) -> dict[str, Any]:
    return {
        "job": job.to_dict(),
        "spec_digest": spec_digest(job, trust),
        "pack": trust.pack_for(job),
        "public_key_pem": trust.key_for(job),
        "previous": resumable_digest(previous, sarif=sarif),
        "sarif": sarif,
    }


def resumable_digest(line: Mapping[str, Any] | None, *, sarif: bool) -> str | None:
    """The content digest of a finished line, or ``None`` when its job must run again:
    it did not complete, or SARIF is wanted and the line has none."""
    if line is None or line.get("exit_code") not in (0, 1):
        return None
    if sarif and "sarif" not in line:
        return None
    digest = (line.get("digests") or {}).get("job")
    return digest if isinstance(digest, str) else None


def run_batch(
    jobs: Sequence[Job],
    engine: Engine,
    output: Path,
    *,
    trust: Trust | None = None,
    sarif: Path | None = None,
    timeout: float | None = None,
    fresh: bool = False,
    observe: LineObserver | None = None,
    start_timeout: float | None = WORKER_START_SECONDS,
) -> BatchSummary:
    """Run ``jobs`` on ``engine``, streaming one line per job into ``output``."""
    started = time.monotonic()
    trust = trust or load_trust(jobs)
    order = [job.id for job in jobs]
    with ResultLog(output, fresh=fresh) as log:
        settled: dict[str, Mapping[str, Any]] = {}
        skipped = 0
        sarif_file = _SarifFile(sarif, order)

        def deliver(task: Task, outcome: Outcome) -> None:
            nonlocal skipped
            job_id = task["job"]["id"]
            was_skipped = isinstance(outcome, dict) and bool(outcome.get("skipped"))
            if was_skipped:
                line: Mapping[str, Any] = log.previous[job_id]
                skipped += 1
            else:
                line = _line_of(task, outcome)
                log.append(line)
            settled[job_id] = line
            if observe is not None:
                observe(line, was_skipped)
            if sarif_file.due():
                sarif_file.write({**log.previous, **settled})

        tasks = [
            make_task(job, trust, log.previous.get(job.id), sarif=sarif is not None) for job in jobs
        ]
        try:
            schedule(engine, tasks, deliver, timeout=timeout, start_timeout=start_timeout)
        finally:
            lines = {**log.previous, **settled}
            log.compact(order, lines)
            sarif_file.write(lines)
    final = [lines[i] for i in order if i in lines]
    verdicts = Counter(str(x["verdict"]) for x in final)
    return BatchSummary(
        jobs=len(jobs),
        ran=len(settled) - skipped,
        skipped=skipped,
        verdicts={v: verdicts.get(v, 0) for v in ("pass", "fail", "error")},
        timed_out=sum(1 for x in final if x.get("timed_out")),
        exit_code=max((int(x["exit_code"]) for x in final), default=2),
        seconds=time.monotonic() - started,
    )


def _line_of(task: Task, outcome: Outcome) -> Mapping[str, Any]:
    if isinstance(outcome, Lost):
        return error_line(
            Job.from_dict(task["job"]),
            outcome.message,
            2,
            {},
            outcome.seconds,
            timed_out=outcome.timed_out,
            worker=outcome.worker or "unknown",
        )
    return outcome


class _SarifFile:
    """The batch's SARIF file, rewritten whole (atomically) at most every few seconds."""

    def __init__(self, path: Path | None, order: Sequence[str]) -> None:
        self.path = path
        self.order = order
        self._written = 0.0

    def due(self) -> bool:
        return self.path is not None and time.monotonic() - self._written >= SARIF_EVERY_SECONDS

    def write(self, lines: Mapping[str, Mapping[str, Any]]) -> None:
        if self.path is None:
            return
        self._written = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, batch_sarif(lines[i] for i in self.order if i in lines))
