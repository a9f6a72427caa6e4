"""Options and output handling shared by the subcommands."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanner.findings import Severity
from scanner.report import OutputFormat, Report, render

if TYPE_CHECKING:
    from scanner.policy import Pack

EXIT_PASS = 0
EXIT_FAIL = 1


def add_output_options(parser: argparse.ArgumentParser, *, gate: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--format",
        "-f",
        type=OutputFormat,
        choices=list(OutputFormat),
        default=OutputFormat.TEXT,
        help="report format: text (terminal), json (schema modelseal/report/v1), sarif "
        "(SARIF 2.1.0) or html (one self-contained page); default: text",
    )
    group.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the report to FILE instead of stdout",
    )
    group.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bar and no text report on stdout (exit code only), unless -o is given",
    )
    group.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour in the text report (default: auto, on a terminal only)",
    )
    if gate:
        group.add_argument(
            "--fail-on",
            type=Severity.parse,
            action=_ExplicitFailOn,
            default=Severity.MEDIUM,
            metavar="SEVERITY",
            help="fail (exit 1) when a finding has this severity or higher: "
            "info, low, medium, high, critical (default: medium, or the rules pack's)",
        )
        group.add_argument(
            "--rules",
            type=rules_option,
            # A string default goes through ``type`` too, so every parse (re)sets the
            # active pack, and a pack from an earlier in-process run never lingers.
            default="",
            metavar="PACK_OR_PATH",
            help="judge findings by a rules pack: default, strict, audit, or a pack file "
            "(docs/rules-packs.md); without it, catalogue severities apply",
        )


class _ExplicitFailOn(argparse.Action):
    """Store --fail-on and remember it was given, so it wins over a pack's fail_on."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.fail_on_explicit = True


def rules_option(text: str) -> Pack | None:
    """Load the pack named on the command line and make it the active pack, so checks
    read its thresholds while they run (they run before the report exists)."""
    from scanner.policy import PackError, activate, load_pack

    if not text:
        activate(None)
        return None
    try:
        pack = load_pack(text)
    except PackError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    activate(pack)
    return pack


def judge(report: Report, args: argparse.Namespace) -> Report:
    """The report judged by the ``--rules`` pack, if one was given."""
    from scanner.policy import PolicyReport, apply_pack

    pack = getattr(args, "rules", None)
    if pack is None or isinstance(report, PolicyReport):
        return report
    explicit = args.fail_on if getattr(args, "fail_on_explicit", False) else None
    return apply_pack(report, pack, fail_on=explicit)


def emit(report: Report, args: argparse.Namespace) -> int:
    """Write the report where asked and return the exit code for its verdict."""
    report = judge(report, args)
    to_file = args.output is not None
    stream_is_tty = sys.stdout.isatty() and not to_file
    color = args.color == "always" or (args.color == "auto" and stream_is_tty)
    text = render(report, args.format, color=color, width=_width())
    if to_file:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    elif not args.quiet:
        sys.stdout.write(text)
        sys.stdout.flush()
    if report.verdict == "error":
        return 2
    return EXIT_FAIL if report.verdict == "fail" else EXIT_PASS


def _width() -> int:
    import shutil

    return max(80, min(160, shutil.get_terminal_size((120, 24)).columns))


def emit_error_report(args: argparse.Namespace, message: str) -> None:
    """For machine formats, also write a report whose verdict is ``error``, so a pipeline
    reading the file sees the failure (SARIF: ``executionSuccessful: false``)."""
    fmt = getattr(args, "format", None)
    if fmt not in (OutputFormat.JSON, OutputFormat.SARIF, OutputFormat.HTML):
        return
    report = Report(
        command=str(getattr(args, "command", "")), artifacts=(), findings=(), error=message
    )
    text = render(report, fmt)
    out = getattr(args, "output", None)
    if out is not None:
        with contextlib.suppress(OSError):  # the one-line error on stderr still stands
            out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
