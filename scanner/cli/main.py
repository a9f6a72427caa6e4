"""Entry point: parse arguments, dispatch to a subcommand, map errors to exit codes.

Exit codes: 0 pass, 1 policy failure, 2 could not complete (bad usage, unreadable or
malformed input). This is the only place that catches the project's errors.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from scanner import __version__
from scanner.allocator import keep_freed_memory
from scanner.cli.common import HelpFormatter, check_output_path, emit_error_report
from scanner.exit_codes import EXIT_ERROR
from signing.errors import ModelsealError

# Each module defines ``register(subparsers)``, which adds its parser and sets
# ``handler`` to a function ``(args) -> int``.
SUBCOMMAND_MODULES = (
    "scanner.cli.demo",
    "scanner.cli.scan",
    "scanner.cli.diff",
    "scanner.cli.manifest",
    "scanner.cli.rules",
    "scanner.cli.sign",
    "scanner.cli.verify",
    "scanner.cli.attest",
    "scanner.cli.verify_chain",
    "scanner.cli.gate",
    "scanner.cli.redteam",
    "scanner.cli.evaluate",
    "scanner.cli.lifecycle",
    "scanner.cli.batch",
)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"modelseal: error: {message}\n")
        raise SystemExit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="modelseal",
        description=(
            "Check that a deployed model artifact is exactly what was trusted, transformed "
            "only in allowed ways, and say what changed and where."
        ),
        epilog="Exit codes: 0 pass, 1 policy failure, 2 could not complete.",
    )
    parser.add_argument("--version", action="version", version=f"modelseal {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        _check_output(args)
    except ModelsealError as exc:
        # Nothing was written, not even an error report: -o itself is what is wrong.
        sys.stderr.write(f"modelseal: error: {exc}\n")
        return exc.exit_code
    keep_freed_memory()
    try:
        return int(args.handler(args))
    except ModelsealError as exc:
        sys.stderr.write(f"modelseal: error: {exc}\n")
        emit_error_report(args, str(exc))
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`modelseal rules list | head`): not an error of ours.
        # Point stdout at devnull so the interpreter's final flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as exc:
        # A file the command had to read or write failed under it (disk full, removed).
        where = f"{exc.filename}: " if exc.filename else ""
        message = f"{where}{exc.strerror or exc}"
        sys.stderr.write(f"modelseal: error: {message}\n")
        emit_error_report(args, message)
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("modelseal: interrupted\n")
        return EXIT_ERROR
    except Exception as exc:
        # A bug, not bad input: one line and exit 2 instead of a traceback, unless asked.
        if os.environ.get("MODELSEAL_TRACEBACK"):
            raise
        message = (
            f"internal error ({type(exc).__name__}: {exc}); "
            "rerun with MODELSEAL_TRACEBACK=1 for the traceback and report it"
        )
        sys.stderr.write(f"modelseal: error: {message}\n")
        emit_error_report(args, message)
        return EXIT_ERROR


def _check_output(args: argparse.Namespace) -> None:
    """Refuse an unwritable ``-o`` before the command does any work."""
    output = getattr(args, "output", None)
    if output is None:
        return
    fmt = getattr(args, "format", None)
    check_output_path(output, formats=(str(fmt),) if fmt is not None else ())


if __name__ == "__main__":
    raise SystemExit(main())
