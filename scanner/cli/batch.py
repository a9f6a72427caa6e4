"""``modelseal batch JOBS -o results.jsonl``: many jobs, one result line each."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from scanner.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="run many diff / scan / verify jobs on local processes or a Ray cluster",
        description=(
            "Run every job of JOBS (a JSONL job file, or a folder of model folders that each "
            "hold their trusted modelseal.manifest.json and/or model.sig) on a local process "
            "pool or a Ray cluster, and write one JSON line per job to the result file as "
            "jobs finish. Re-running with the same result file skips the jobs already done "
            "whose inputs are unchanged (by content digest) and runs the rest. A job that "
            "fails, crashes or runs past --timeout costs only itself. See docs/batch.md."
        ),
        epilog="Exit codes: the worst job's: 0 every job passed, 1 a policy failure, "
        "2 a job or the batch could not complete.\n"
        "Examples:\n"
        "  modelseal batch jobs.jsonl -o results.jsonl --sarif results.sarif\n"
        "  modelseal batch fleet/ --public-key release.pub -o fleet.jsonl --timeout 600\n"
        "  modelseal batch jobs.jsonl -o results.jsonl --address ray://head-svc:10001",
    )
    parser.add_argument(
        "jobs", type=Path, metavar="JOBS", help="JSONL job file, or a folder of model folders"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="RESULTS.jsonl",
        help="result file, one JSON line per job (kept and resumed from if it exists)",
    )
    parser.add_argument(
        "--sarif",
        type=Path,
        metavar="FILE",
        help="also write every job's findings as one SARIF 2.1.0 run",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="ignore the results already in the result file and run every job again",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        metavar="SECONDS",
        help="stop a job that runs longer (its line records the timeout, exit code 2)",
    )
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        choices=["local", "ray"],
        help="where jobs run: local processes, or Ray (default: ray when --address is given)",
    )
    engine.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster address: ray://HOST:10001 (Ray Client, e.g. a KubeRay head "
        "service), HOST:6379, or auto (the cluster this machine belongs to)",
    )
    engine.add_argument(
        "--workers",
        type=_positive(int),
        metavar="N",
        help="jobs run at once (default: local, the number of cores; Ray, the cluster's "
        "CPUs divided by --cpus-per-job)",
    )
    engine.add_argument(
        "--cpus-per-job",
        type=_positive(float),
        default=1.0,
        metavar="N",
        help="Ray: CPUs each job reserves and uses (default 1)",
    )
    engine.add_argument(
        "--worker-start-timeout",
        type=_positive(float),
        metavar="SECONDS",
        help="stop the batch (exit 2) when no job is running and no worker becomes ready "
        "for this long, e.g. a Ray cluster with no node that has --cpus-per-job free CPUs "
        "(default: 600)",
    )
    engine.add_argument(
        "--runtime-env",
        type=_runtime_env,
        metavar="JSON",
        help="Ray: runtime environment for the workers, as JSON or a JSON file, e.g. "
        '\'{"pip": ["modelseal[ray]"]}\'',
    )
    defaults = parser.add_argument_group("defaults for every job that does not set its own")
    defaults.add_argument(
        "--rules", metavar="PACK_OR_PATH", help="rules pack: default, strict, audit or a file"
    )
    defaults.add_argument(
        "--fail-on",
        type=_severity,
        metavar="SEVERITY",
        help="fail on findings of this severity or higher (default: medium, or the pack's)",
    )
    defaults.add_argument(
        "--public-key",
        type=Path,
        metavar="PUB.pem",
        help="trusted signer of the signatures (model.sig in a folder of models)",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress and no summary on stdout"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.batch import JobDefaults, load_jobs, run_batch
    from scanner.batch.engine import WORKER_START_SECONDS
    from scanner.batch.jobs import is_pack_name

    rules = args.rules
    if rules is not None and not is_pack_name(rules):
        rules = str(Path(rules).absolute())
    defaults = JobDefaults(
        rules=rules,
        fail_on=args.fail_on,
        public_key=str(args.public_key.absolute()) if args.public_key else None,
    )
    jobs = load_jobs(args.jobs, defaults)
    engine = _engine(args, len(jobs))
    with _progress(args, len(jobs)) as observe:
        summary = run_batch(
            jobs,
            engine,
            args.output,
            sarif=args.sarif,
            timeout=args.timeout,
            fresh=args.fresh,
            observe=observe,
            start_timeout=args.worker_start_timeout or WORKER_START_SECONDS,
        )
    if not args.quiet:
        v = summary.verdicts
        timed = f" ({summary.timed_out} timed out)" if summary.timed_out else ""
        written = f"{args.output}" + (f", {args.sarif}" if args.sarif else "")
        sys.stdout.write(
            f"batch: {summary.jobs} jobs: {v['pass']} pass, {v['fail']} fail, "
            f"{v['error']} error{timed}; {summary.ran} ran, {summary.skipped} already done; "
            f"{summary.seconds:.1f} s -> {written}\n"
        )
    return summary.exit_code


def _engine(args: argparse.Namespace, jobs: int) -> Any:
    kind = args.engine or ("ray" if args.address else "local")
    if kind == "local":
        if args.address or args.runtime_env:
            raise UsageError("--address and --runtime-env are for --engine ray")
        from scanner.batch import LocalEngine
        from scanner.batch.local import usable_cores

        return LocalEngine(min(args.workers or usable_cores(), jobs))
    from scanner.batch import RayEngine

    return RayEngine(
        args.address,
        min(args.workers, jobs) if args.workers else None,
        cpus_per_job=args.cpus_per_job,
        runtime_env=args.runtime_env,
        max_workers=jobs,
    )


@contextlib.contextmanager
def _progress(args: argparse.Namespace, total: int) -> Iterator[Any]:
    """A live bar with the verdicts so far, on an interactive stderr only."""
    if args.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    counts = {"pass": 0, "fail": 0, "error": 0, "skipped": 0}
    bar = Progress(
        TextColumn("batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("batch", total=total, counts="")

    def observe(line: Mapping[str, Any], skipped: bool) -> None:
        counts["skipped" if skipped else str(line["verdict"])] += 1
        if not skipped and line["verdict"] != "pass":
            # Plain text: ids and messages carry names from artifacts, never markup.
            console.print(
                f"{str(line['verdict']).upper():5} {line['id']}: {_reason(line)}",
                markup=False,
                highlight=False,
                no_wrap=True,
                overflow="ellipsis",
            )
        text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        bar.update(task, advance=1, counts=text)

    with bar:
        yield observe


def _reason(line: Mapping[str, Any]) -> str:
    if line.get("error"):
        return str(line["error"])
    top = (line.get("findings") or {}).get("top") or []
    return f"{top[0]['rule_id']} {top[0]['message']}" if top else ""


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value

    return parse


def _severity(text: str) -> str:
    from scanner.findings import Severity

    try:
        return str(Severity.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _runtime_env(text: str) -> dict[str, Any]:
    source = text
    if not text.lstrip().startswith("{"):
        try:
            source = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror}") from None
    try:
        value = json.loads(source)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a runtime environment is a JSON object")
    return value
