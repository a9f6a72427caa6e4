"""Claim re-checking for step attestations, handed to :mod:`signing` as a callable.

Today the scanner can re-derive "identical" (same manifest digest). Other re-derivable
kinds (cast, quantize, prune, convert) go to ``scanner.claims.check_claim`` when that
module exists; until then they are reported as could-not-recheck, so ``verify-chain``
fails closed and ``attest`` refuses unless ``--declared-only``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from signing.attest import CheckResult, CheckStatus, StepStatement


def check_step(statement: StepStatement, input_path: Path | None,
               output_path: Path | None) -> CheckResult:
    """Re-derive ``statement``'s claim from the input and output artifacts."""
    if statement.kind == "identical":
        same = all(i.digest == statement.output.digest for i in statement.inputs)
        return CheckResult(CheckStatus.PASS if same else CheckStatus.FAIL,
                           "manifest digests are equal" if same else
                           "output manifest digest differs from the input's")
    try:
        claims = importlib.import_module("scanner.claims")
    except ModuleNotFoundError as exc:
        if exc.name not in ("scanner.claims", "scanner"):
            raise
        return CheckResult(CheckStatus.UNCHECKABLE,
                           f"this modelseal cannot re-derive '{statement.kind}' claims yet "
                           "(scanner.claims is not available)")
    if input_path is None or output_path is None:
        return CheckResult(CheckStatus.NO_ARTIFACTS,
                           "input or output artifact not supplied (--artifact)")
    outcome = claims.check_claim(statement.kind, dict(statement.parameters), input_path,
                                 output_path)
    return _adapt(outcome)


def _adapt(outcome: Any) -> CheckResult:
    """Accept a CheckResult, a bool, or an object with ok/passed and detail/message."""
    if isinstance(outcome, CheckResult):
        return outcome
    if isinstance(outcome, bool):
        return CheckResult(CheckStatus.PASS if outcome else CheckStatus.FAIL)
    status = getattr(outcome, "status", None)
    detail = str(next((getattr(outcome, a) for a in ("detail", "message", "reason")
                       if getattr(outcome, a, None)), ""))
    if isinstance(status, CheckStatus):
        return CheckResult(status, detail)
    ok = getattr(outcome, "ok", getattr(outcome, "passed", None))
    if ok is None:
        return CheckResult(CheckStatus.UNCHECKABLE, f"claim checker returned {outcome!r}")
    return CheckResult(CheckStatus.PASS if ok else CheckStatus.FAIL, detail)
