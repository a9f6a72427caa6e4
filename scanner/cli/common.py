"""Options and output handling shared by the subcommands.

Nothing here imports numpy, rich or a format library at module level: every subcommand
module imports this one to build its parser, and `modelseal --help` must stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanner.errors import UsageError
from scanner.findings import Severity
from scanner.report import OutputFormat, render

if TYPE_CHECKING:
    from scanner.policy import Pack
    from scanner.report.model import Report

from scanner.exit_codes import exit_code

REPORT_SUFFIXES = {
    ".json": ("json", "sarif"),
    ".sarif": ("sarif",),
    ".html": ("html",),
    ".htm": ("html",),
    ".txt": ("text",),
    ".md": ("text", "markdown"),
}
"""Report file extensions that say which format the file holds (SARIF is JSON too)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wrap each paragraph of a description or epilog to the terminal width, but keep
    the line breaks between paragraphs (examples and exit-code lines stay one per line)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.split("\n")
        return "\n".join(
            textwrap.fill(p, width, initial_indent=indent, subsequent_indent=indent) if p else ""
            for p in paragraphs
        )


def severity_option(text: str) -> Severity:
    """``--fail-on`` values; an unknown one is refused with the valid values listed."""
    try:
        return Severity.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def allow_option(text: str) -> str:
    """``--allow`` values: a change class the analyzers name, or one of its aliases; an
    unknown one is refused with the valid values listed."""
    from scanner.analysis.rules import ALIASES, allowed_classes
    from scanner.diff.model import CHANGE_CLASSES

    if not allowed_classes([text]):
        raise argparse.ArgumentTypeError(
            f"unknown change class {text!r}; choose a class ({', '.join(CHANGE_CLASSES)}) "
            f"or an alias ({', '.join(sorted(ALIASES))})"
        )
    return text


def add_fail_on(parser: argparse.ArgumentParser | Any, *, default: Severity | None) -> None:
    parser.add_argument(
        "--fail-on",
        type=severity_option,
        action=_ExplicitFailOn,
        default=default,
        metavar="SEVERITY",
        help="fail (exit 1) when a finding has this severity or higher: "
        "info, low, medium, high, critical (default: "
        + (
            f"{default}, or the rules pack's"
            if default is not None
            else "the rules pack's, else medium"
        )
        + ")",
    )


def add_rules(parser: argparse.ArgumentParser | Any) -> None:
    parser.add_argument(
        "--rules",
        type=rules_option,
        # A string default goes through ``type`` too, so every parse (re)sets the
        # active pack, and a pack from an earlier in-process run never lingers.
        default="",
        metavar="PACK_OR_PATH",
        help="judge findings by a rules pack: default, strict, audit, or a pack file "
        "(docs/rules-packs.md); without it, catalogue severities apply",
    )


def add_output_options(
    parser: argparse.ArgumentParser,
    *,
    gate: bool = True,
    formats: tuple[OutputFormat, ...] = tuple(OutputFormat),
    report_file: bool = True,
) -> None:
    """The options of every command that writes a report: --format, -o, --quiet,
    --color and (with ``gate``) --fail-on and --rules."""
    group = parser.add_argument_group("output")
    if report_file:
        names = ", ".join(str(f) for f in formats)
        group.add_argument(
            "--format",
            "-f",
            type=OutputFormat,
            choices=list(formats),
            default=OutputFormat.TEXT,
            help=f"report format: {names}; text is for terminals, json follows the schema "
            "modelseal/report/v1, sarif is SARIF 2.1.0, html one self-contained page "
            "(default: text)",
        )
        group.add_argument(
            "-o",
            "--output",
            type=Path,
            metavar="FILE",
            help="write the report to FILE instead of stdout (its folder must exist)",
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
        add_fail_on(group, default=Severity.MEDIUM)
        add_rules(group)


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


def explicit_fail_on(args: argparse.Namespace) -> Severity | None:
    """The --fail-on the user typed, or None when it is only the default."""
    return args.fail_on if getattr(args, "fail_on_explicit", False) else None


def rules_option(text: str) -> Pack | None:
    """Load the pack named on the command line (it judges the finished report)."""
    from scanner.policy import PackError, load_pack

    if not text:
        return None
    try:
        pack = load_pack(text)
    except PackError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return pack


def check_output_path(path: Path, *, what: str = "output", formats: tuple[str, ...] = ()) -> None:
    """Refuse an output path that cannot be written, before any work is done.

    ``formats`` are the names of the format the file will hold; a report extension that
    says otherwise (``-o report.sarif`` with ``--format json``) is refused too.
    """
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {what} {path}: folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write {what} {path}: the file is not writable")
    suffix = path.suffix.lower()
    expected = REPORT_SUFFIXES.get(suffix)
    if formats and expected is not None and not set(formats) & set(expected):
        raise UsageError(
            f"{what} {path} ends in {suffix} but the command writes {formats[0]}; "
            f"use a matching extension or --format {expected[0]}"
        )


def judge(report: Report, args: argparse.Namespace) -> Report:
    """The report judged by the ``--rules`` pack, if one was given."""
    from scanner.policy import PolicyReport, apply_pack

    pack = getattr(args, "rules", None)
    if pack is None or isinstance(report, PolicyReport):
        return report
    return apply_pack(report, pack, fail_on=explicit_fail_on(args))


def use_color(args: argparse.Namespace) -> bool:
    to_file = getattr(args, "output", None) is not None
    return args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not to_file)


def write_text(args: argparse.Namespace, text: str) -> None:
    """Write ``text`` to ``-o`` or stdout (unless --quiet)."""
    if getattr(args, "output", None) is not None:
        args.output.write_text(text, encoding="utf-8")
    elif not getattr(args, "quiet", False):
        sys.stdout.write(text)
        sys.stdout.flush()


def emit(report: Report, args: argparse.Namespace) -> int:
    """Write the report where asked and return the exit code for its verdict."""
    report = judge(report, args)
    write_text(args, render(report, args.format, color=use_color(args), width=_width()))
    return exit_code(report.verdict)


def _width() -> int:
    """The terminal's width on a terminal; 120 columns in a pipe or a file, so what a
    script or a CI log captures does not depend on where it ran."""
    import shutil

    if not sys.stdout.isatty():
        return 120
    return max(80, min(160, shutil.get_terminal_size((120, 24)).columns))


def emit_error_report(args: argparse.Namespace, message: str) -> None:
    """For machine formats, also write a report whose verdict is ``error``, so a pipeline
    reading the file sees the failure (SARIF: ``executionSuccessful: false``)."""
    fmt = getattr(args, "format", None)
    if fmt not in (OutputFormat.JSON, OutputFormat.SARIF, OutputFormat.HTML):
        return
    from scanner.report.model import Report

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
