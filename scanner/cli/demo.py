"""``modelseal demo``: the main job on a built-in real model, offline."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from scanner.cli.common import add_output_options, exit_code, judge, use_color, write_text
from scanner.errors import UsageError
from scanner.report import OutputFormat, render


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a diff on a built-in real model: one tampered copy, one benign fp16 cast",
        description=(
            "Take the bundled Silero VAD model (real weights), make a tampered copy with a "
            "replaced one-channel subnetwork through its four conv layers (SRA-style) and a "
            "benign fp16 cast, and "
            "diff both against the original. The tampered copy must fail and the cast must "
            "pass; exit 0 when both do. With --rules, both diffs are judged by that pack."
        ),
        epilog="Exit codes: 0 the tampered copy fails and the cast passes, 1 otherwise, "
        "2 could not complete.",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="write the three demo models into DIR and keep them",
    )
    add_output_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.api import diff_artifacts
    from scanner.demo import make_demo_files
    from scanner.report.build import report_from_diff

    if args.keep is not None and not args.keep.is_dir():
        raise UsageError(f"--keep {args.keep}: folder does not exist")
    with tempfile.TemporaryDirectory(prefix="modelseal-demo-") as tmp:
        folder = args.keep or Path(tmp)
        files = make_demo_files(folder)
        chain = ", ".join(f"{t}[{c}]" for t, c in files.chain)
        outputs = []
        verdicts = {}
        for label, deployed in (("tampered", files.tampered), ("benign fp16 cast", files.benign)):
            report = judge(
                report_from_diff(diff_artifacts(files.trusted, deployed), args.fail_on), args
            )
            verdicts[label] = report.verdict
            if args.format is OutputFormat.TEXT:
                outputs.append(f"\n=== {label} copy ===\n")
            outputs.append(render(report, args.format, color=use_color(args)))
        text = "".join(outputs)
        if args.format is OutputFormat.TEXT:
            text = (
                "modelseal demo: Silero VAD "
                f"(real weights, {files.trusted.stat().st_size:,} bytes)\n"
                f"  tampered copy: replaced subnetwork (one channel) {chain}\n"
                f"  benign copy:   every tensor cast to float16\n" + text
            )
        write_text(args, text)
    ok = verdicts == {"tampered": "fail", "benign fp16 cast": "pass"}
    if args.format is OutputFormat.TEXT and not args.quiet:
        outcome = ", ".join(f"{label} copy {v.upper()}" for label, v in verdicts.items())
        sys.stdout.write(
            "\ndemo result: tampered copy FAILS, benign cast PASSES\n"
            if ok
            else f"\ndemo result: unexpected verdicts: {outcome}\n"
        )
    return exit_code("pass" if ok else "fail")
