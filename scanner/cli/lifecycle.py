"""``modelseal lifecycle check``: threats per pipeline step and the evidence covering them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanner.cli.verify import add_verifier_options, build_verifier
from scanner.errors import UsageError


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
            "of the catalogue that apply, which the configured evidence covers (signature, "
            "re-derived claim, pair analysis, single-artifact scan, behavioural probe) and "
            "which remain open, with a coverage summary and recommendations. Signed step "
            "attestations in --attestations DIR count once verified against the trusted "
            "signer."
        ),
        epilog="Exit codes: 0 done (1 with --fail-under when coverage is below it), 2 could "
        "not complete.",
    )
    check.add_argument("lifecycle", type=Path, help="lifecycle.toml")
    check.add_argument(
        "--attestations",
        type=Path,
        metavar="DIR",
        help="folder of signed step attestations (*.json)",
    )
    check.add_argument("--format", choices=["text", "json"], default="text")
    check.add_argument("-o", "--output", type=Path, metavar="FILE")
    check.add_argument(
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

    lifecycle = load_lifecycle(args.lifecycle)
    attestations = None
    if args.attestations is not None:
        if not args.attestations.is_dir():
            raise UsageError(f"attestation folder {args.attestations} does not exist")
        attestations = read_attestations(args.attestations, build_verifier(args))
    report = check_lifecycle(lifecycle, attestations)
    text = report.to_json() if args.format == "json" else render_text(report)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if args.fail_under is not None and report.coverage * 100 < args.fail_under:
        return 1
    return 0
