"""The one mapping from a verdict to a process exit code (docs/cli.md).

0: the check passed; 1: a policy failure (the artifact did not pass); 2: the check could
not complete (bad input, bad usage). Every command and every batch job uses this.
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2

EXIT_CODES = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "error": EXIT_ERROR}
VERDICTS = {code: verdict for verdict, code in EXIT_CODES.items()}


def exit_code(verdict: str) -> int:
    """The exit code of ``verdict``; anything but pass or fail could not complete."""
    return EXIT_CODES.get(verdict, EXIT_ERROR)
