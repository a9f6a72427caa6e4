"""``modelseal scan PATH``."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanner.cli.common import add_output_options, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scan",
        help="audit one artifact on its own",
        description=(
            "Parse PATH fully and validate its structure (a malformed file is an error, exit "
            "2), then run the single-artifact checks and report their findings."
        ),
        epilog="Exit codes: 0 pass, 1 policy failure, 2 could not complete.",
    )
    parser.add_argument("path", type=Path, help="model file or model folder")
    add_output_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.checks.single import scan_open
    from scanner.formats import open_artifact
    from scanner.report.build import report_from_scan

    with open_artifact(args.path) as artifact:
        report = report_from_scan(scan_open(artifact), args.fail_on)
    return emit(report, args)
