"""Run one job where the data is: in a local worker process or a Ray actor.

A task is plain data (:func:`scanner.batch.run.make_task`): the job, the rules pack and
public key it trusts, the digest of the job's spec, and the content digest of the same
job's previous result, if any. The worker digests the job's input files first; when the
content digest equals the previous one the job is skipped, otherwise it runs through the
library API and the worker returns the result line. Every failure becomes a result line
with exit code 2; nothing a job does escapes the worker except by killing it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scanner.exit_codes import EXIT_ERROR, VERDICTS
from scanner.exit_codes import exit_code as verdict_exit_code
from signing.errors import ModelsealError

RESULT_SCHEMA = "modelseal/batch-result/v1"
TOP_FINDINGS = 5
SKIPPED_DIRS = (".git", ".hg", ".svn", "__pycache__")
"""Left out of content digests, as the readers leave them out of artifacts."""

Runner = Callable[[Mapping[str, Any]], dict[str, Any]]


class JobWorker:
    """Runs tasks one at a time; the same object serves a local worker process and a
    Ray actor. ``threads`` bounds the threads one job uses (cores / concurrent jobs);
    ``runner`` ("module:function") replaces :func:`run_task`, for tools built on top."""

    def __init__(self, threads: int | None = None, runner: str | None = None) -> None:
        if threads:
            os.environ["MODELSEAL_WORKERS"] = str(threads)
        self.threads = threads
        self._run: Runner = load_runner(runner) if runner else run_task
        # A worker is a modelseal process like the CLI's: same allocator settings.
        from scanner.allocator import keep_freed_memory

        keep_freed_memory()
        # Import the checks now, so a job's time (and its timeout) is the job's own.
        importlib.import_module("scanner.batch.checks")

    def ready(self) -> dict[str, Any]:
        return {"worker": worker_name()}

    def run(self, task: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self._run(task)
        except Exception as exc:  # a replacement runner's bug costs one job, not the worker
            from scanner.batch.jobs import Job

            message = f"internal error: {type(exc).__name__}: {exc}"
            return error_line(Job.from_dict(task["job"]), message, 2, {}, 0.0)


def load_runner(spec: str) -> Runner:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"runner {spec!r} is not 'module:function'")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Digest the inputs, skip the job if they match its previous result, else run it."""
    from scanner.batch.checks import run_job
    from scanner.batch.jobs import Job

    job = Job.from_dict(task["job"])
    started = time.perf_counter()
    digests: dict[str, str] = {}
    try:
        digests = input_digests(job)
        digests["job"] = content_digest(task["spec_digest"], digests)
        if task.get("previous") == digests["job"]:
            return {"skipped": True, "id": job.id, "digests": digests}
        report = run_job(job, task.get("pack"), task.get("public_key_pem"))
    except ModelsealError as exc:
        return error_line(job, str(exc), exc.exit_code, digests, time.perf_counter() - started)
    except Exception as exc:  # a bug must cost one job, not the batch
        return error_line(
            job,
            f"internal error: {type(exc).__name__}: {exc}",
            2,
            digests,
            time.perf_counter() - started,
        )
    line = result_line(job, report, digests, time.perf_counter() - started)
    if task.get("sarif"):
        line["sarif"] = sarif_fragment(report)
    return line


def input_digests(job: Any) -> dict[str, str]:
    """sha256 root digest (OMS file serialization) of every input the job reads."""
    from signing.oms import hash_model

    threads = int(os.environ.get("MODELSEAL_WORKERS", "0")) or None
    out = {}
    for role in ("trusted", "deployed", "signature", "manifest"):
        path = getattr(job, role)
        if path is None:
            continue
        try:
            manifest = hash_model(
                Path(path),
                ignore_paths=SKIPPED_DIRS,
                ignore_git_paths=False,
                allow_symlinks=True,
                workers=threads,
            )
        except ModelsealError as exc:
            raise ModelsealError(f"{role}: {exc}") from None
        except OSError as exc:
            raise ModelsealError(f"{role} {path}: cannot read: {exc.strerror}") from None
        out[role] = "sha256:" + manifest.root_digest
    return out


def content_digest(spec_digest: str, inputs: Mapping[str, str]) -> str:
    """The job's identity for resuming: its spec and the content of every input."""
    text = json.dumps({"spec": spec_digest, "inputs": dict(inputs)}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def result_line(
    job: Any, report: Any, digests: Mapping[str, str], seconds: float
) -> dict[str, Any]:
    exit_code = verdict_exit_code(report.verdict)
    return _line(
        job,
        verdict=report.verdict,
        exit_code=exit_code,
        digests=digests,
        seconds=seconds,
        classification=report.classification,
        findings=findings_summary(report),
        error=report.error,
    )


def error_line(
    job: Any,
    message: str,
    exit_code: int,
    digests: Mapping[str, str],
    seconds: float,
    *,
    timed_out: bool = False,
    worker: str | None = None,
) -> dict[str, Any]:
    """The line of a job that did not complete (or, exit code 1, failed verification in
    a way that left no report)."""
    return _line(
        job,
        verdict=VERDICTS.get(exit_code, "error"),
        exit_code=exit_code if exit_code in VERDICTS else EXIT_ERROR,
        digests=digests,
        seconds=seconds,
        classification=None,
        findings=None,
        error=message,
        timed_out=timed_out,
        worker=worker,
    )


def _line(
    job: Any,
    *,
    verdict: str,
    exit_code: int,
    digests: Mapping[str, str],
    seconds: float,
    classification: str | None,
    findings: Mapping[str, Any] | None,
    error: str | None,
    timed_out: bool = False,
    worker: str | None = None,
) -> dict[str, Any]:
    return {
        "schema": RESULT_SCHEMA,
        "id": job.id,
        "kind": job.kind,
        "source": job.source,
        "inputs": job.inputs(),
        "digests": dict(digests),
        "verdict": verdict,
        "exit_code": exit_code,
        "classification": classification,
        "findings": findings,
        "seconds": round(seconds, 3),
        "error": error,
        "timed_out": timed_out,
        "worker": worker or worker_name(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def findings_summary(report: Any) -> dict[str, Any]:
    from scanner.findings import Severity

    failing = report.failing()
    ranked = sorted(report.findings, key=lambda f: -int(f.severity))
    out: dict[str, Any] = {
        "total": len(report.findings),
        "failing": len(failing),
        "by_severity": {
            str(s): sum(1 for f in report.findings if f.severity == s) for s in Severity
        },
        "by_rule": dict(sorted(Counter(f.rule_id for f in report.findings).items())),
        "top": [
            {"rule_id": f.rule_id, "severity": str(f.severity), "message": f.message[:300]}
            for f in ranked[:TOP_FINDINGS]
        ],
    }
    suppressed = getattr(report, "suppressed", None)
    if suppressed is not None:
        out["suppressed"] = len(suppressed)
    return out


def sarif_fragment(report: Any) -> dict[str, Any]:
    """The job's SARIF run (as ``--format sarif`` writes it), its file URIs made
    absolute so the machine that combines the runs can make them relative again."""
    from scanner.batch.sarif import map_uris
    from scanner.report import OutputFormat, render

    run = json.loads(render(report, OutputFormat.SARIF))["runs"][0]
    cwd = os.getcwd()

    def absolute(uri: str) -> str:
        if "://" in uri or os.path.isabs(uri):
            return uri
        return os.path.normpath(os.path.join(cwd, uri))

    map_uris(run, absolute)
    driver = run["tool"]["driver"]
    return {
        "driver": {k: v for k, v in driver.items() if k != "rules"},
        "rules": driver.get("rules", []),
        "results": run.get("results", []),
        "artifacts": run.get("artifacts", []),
    }
