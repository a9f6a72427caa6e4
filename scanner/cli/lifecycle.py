"""``modelseal lifecycle check``: threats per pipeline step and the evidence covering them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scanner.cli.common import add_fail_on, exit_code, explicit_fail_on, write_text
from scanner.cli.verify import add_verifier_options, build_verifier
from scanner.errors import UsageError

if TYPE_CHECKING:
    from scanner.findings import Finding, Severity


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lifecycle", help="model a pipeline's steps and check which threats its evidence covers"
    )
    sub = parser.add_subparsers(dest="lifecycle_command", metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="per step: applicable threats, covering evidence, open risks, recommendations",
        description=(
            "Read lifecycle.toml (docs/lifecycle.md) and print, for every step, the threats "
            "of the catalogue (docs/threats.md) that apply, which the configured evidence "
            "covers (signature, re-derived claim, pair analysis, single-artifact scan, "
            "behavioural probe) and which remain open, with a coverage summary and "
            "recommendations. Signed step attestations in --attestations DIR count once "
            "verified against the trusted signer (one of --public-key, --certificate-chain, "
            "--identity is then required). As findings, an open threat is high (MS901), a "
            "partly covered one low (MS902), a rejected attestation medium (MS903)."
        ),
        epilog="Exit codes: 0 done, 1 with --fail-on when a finding reaches it or with "
        "--fail-under when coverage is below it, 2 could not complete.",
    )
    check.add_argument("lifecycle", type=Path, help="lifecycle.toml")
    check.add_argument(
        "--attestations",
        type=Path,
        metavar="DIR",
        help="folder of signed step attestations (*.json); needs a trusted signer",
    )
    output = check.add_argument_group("output")
    output.add_argument(
        "--format",
        "-f",
        choices=["text", "json", "sarif"],
        default="text",
        help="text, json (schema modelseal/lifecycle-coverage/v1) or sarif (one result per "
        "open or partial step threat); default text",
    )
    output.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the report to FILE, not stdout"
    )
    add_fail_on(output, default=None)
    output.add_argument(
        "--fail-under",
        type=float,
        metavar="PCT",
        help="exit 1 when fewer than PCT%% of step threats are fully covered",
    )
    add_verifier_options(check)
    check.set_defaults(handler=run)
    parser.set_defaults(handler=lambda _a: (parser.print_help(sys.stderr), 2)[1])


def run(args: argparse.Namespace) -> int:
    from scanner.lifecycle import check_lifecycle, load_lifecycle, read_attestations, render_text
    from scanner.lifecycle.rules import lifecycle_findings

    fail_on = explicit_fail_on(args)
    lifecycle = load_lifecycle(args.lifecycle)
    attestations = None
    if args.attestations is not None:
        if not args.attestations.is_dir():
            raise UsageError(f"attestation folder {args.attestations} does not exist")
        attestations = read_attestations(args.attestations, build_verifier(args))
    report = check_lifecycle(lifecycle, attestations)
    findings = lifecycle_findings(report, args.lifecycle, args.attestations)
    if args.format == "json":
        text = report.to_json()
    elif args.format == "sarif":
        text = _sarif(args.lifecycle, findings, fail_on)
    else:
        text = render_text(report)
    write_text(args, text)
    failing = fail_on is not None and any(f.severity >= fail_on for f in findings)
    below = args.fail_under is not None and report.coverage * 100 < args.fail_under
    return exit_code("fail" if failing or below else "pass")


def _sarif(path: Path, findings: list[Finding], fail_on: Severity | None) -> str:
    from scanner.findings import Severity
    from scanner.report import OutputFormat, render
    from scanner.report.model import ArtifactSummary, Report

    summary = ArtifactSummary(
        role="scanned",
        path=str(path),
        root=str(path.parent),
        format="lifecycle",
        files=1,
        tensors=0,
        tensor_bytes=0,
    )
    report = Report(
        command="lifecycle check",
        artifacts=(summary,),
        findings=tuple(findings),
        # Without --fail-on the check only reports: nothing in the SARIF run fails.
        fail_on=fail_on if fail_on is not None else Severity.CRITICAL,
    )
    return render(report, OutputFormat.SARIF)
