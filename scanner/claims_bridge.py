"""Claim re-checking for step attestations, handed to :mod:`signing` as a callable.

"identical" is re-derived from the manifest digests. The other re-derivable kinds
(cast, quantize, gguf, requantize, prune, convert, merge, lora) go to
:func:`scanner.claims.check_claim` with the step's parameters (``merge``: ``--param
config=merge.yml``, the first ``--input`` being the base model; ``lora``: ``--param
adapter=DIR`` or ``--param r=8 --param modules=q_proj,v_proj``). A ``quantize`` step
whose ``type`` parameter is a ggml block type (``--param type=q8_0``) is checked as
the scanner's ``gguf`` claim (block quantization of a float source); every other
``quantize`` step as the int8 ``quantize`` claim. Parameters the checker does not
understand make the claim *could-not-recheck* (fail closed: ``attest`` refuses unless
``--declared-only``, ``verify-chain`` reports MSC011), never an error that stops
verification.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scanner.claims import check_claim
from signing.attest import CheckResult, CheckStatus, StepStatement


def claim_for(kind: str, parameters: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The scanner claim kind and parameters that re-derive a step of ``kind``."""
    from scanner.claims.grammar import GGUF_TYPES

    params = dict(parameters)
    if kind == "quantize" and params.get("type", "").lower() in GGUF_TYPES:
        return "gguf", params
    return kind, params


def check_step(
    statement: StepStatement, input_path: Path | None, output_path: Path | None
) -> CheckResult:
    """Re-derive ``statement``'s claim from the input and output artifacts."""
    if statement.kind == "identical":
        same = all(i.digest == statement.output.digest for i in statement.inputs)
        return CheckResult(
            CheckStatus.PASS if same else CheckStatus.FAIL,
            "manifest digests are equal"
            if same
            else "output manifest digest differs from the input's",
        )
    if input_path is None or output_path is None:
        return CheckResult(
            CheckStatus.NO_ARTIFACTS, "input or output artifact not supplied (--artifact)"
        )
    from scanner.errors import UsageError

    kind, params = claim_for(statement.kind, statement.parameters)
    try:
        outcome = check_claim(kind, params, input_path, output_path)
    except UsageError as exc:
        # The claim grammar rejected the step's parameters: nothing was re-derived.
        return CheckResult(
            CheckStatus.UNCHECKABLE,
            f"cannot re-check '{statement.kind}' with parameters "
            f"{dict(sorted(params.items()))}: {exc}",
        )
    return _adapt(outcome)


def _adapt(outcome: Any) -> CheckResult:
    """Accept a CheckResult, a bool, or an object with ok/passed and detail/message."""
    if isinstance(outcome, CheckResult):
        return outcome
    if isinstance(outcome, bool):
        return CheckResult(CheckStatus.PASS if outcome else CheckStatus.FAIL)
    status = getattr(outcome, "status", None)
    detail = str(
        next(
            (
                getattr(outcome, a)
                for a in ("detail", "message", "reason")
                if getattr(outcome, a, None)
            ),
            "",
        )
    )
    if isinstance(status, CheckStatus):
        return CheckResult(status, detail)
    ok = getattr(outcome, "ok", getattr(outcome, "passed", None))
    if ok is None:
        return CheckResult(CheckStatus.UNCHECKABLE, f"claim checker returned {outcome!r}")
    return CheckResult(CheckStatus.PASS if ok else CheckStatus.FAIL, detail)
