"""Re-derive claimed transformations (cast, quantize, gguf, requantize, prune, convert).

Public API:

* :func:`check_claim` -- re-check one lifecycle step's claim on two artifacts (used by
  signing before it attests a step);
* :func:`parse_claim` / :class:`Claim` -- the claim grammar (``docs/claims.md``);
* :class:`ClaimResult` -- the outcome, with per-tensor :class:`TensorVerdict` details.

The diff analyzer that runs claims inside ``modelseal diff`` is
``scanner.claims.rules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.claims.base import ClaimOutcome, TensorVerdict, Violation
from scanner.claims.grammar import KINDS, Claim, claim_from, parse_claim
from scanner.findings import Finding, Severity

__all__ = [
    "KINDS",
    "Claim",
    "ClaimResult",
    "TensorVerdict",
    "Violation",
    "check_claim",
    "parse_claim",
]


@dataclass(frozen=True)
class ClaimResult:
    """Whether OUTPUT is a faithful result of applying the claim to INPUT."""

    holds: bool
    kind: str
    message: str
    findings: tuple[Finding, ...] = ()
    tensors: tuple[TensorVerdict, ...] = ()
    claim: str = ""
    checkable: bool = True
    """False when this modelseal cannot re-derive the kind at all."""
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.holds

    @property
    def detail(self) -> str:
        return self.message

    @property
    def status(self) -> Any:
        """The result as signing's ``CheckStatus`` (PASS, FAIL or UNCHECKABLE)."""
        from signing.attest import CheckStatus

        if not self.checkable:
            return CheckStatus.UNCHECKABLE
        return CheckStatus.PASS if self.holds else CheckStatus.FAIL


def check_claim(
    kind: str, params: Mapping[str, str] | str | None, input_path: Path, output_path: Path
) -> ClaimResult:
    """Re-derive ``kind`` (with ``params``) from ``input_path`` and compare with
    ``output_path``. The claim holds when every tensor it covers re-derives and no other
    change remains unexplained.

    ``params`` is a dict (``--param k=v``: keys as in ``docs/claims.md``, or ``spec`` for a
    whole ``A:B:C`` parameter string) or the parameter string itself.
    """
    from scanner.checks.pair import analyze_casts, analyze_unexplained
    from scanner.diff.engine import Analysis, Analyzer, PairContext, diff_open
    from scanner.formats import open_artifact

    if kind.split(":", 1)[0].lower() not in KINDS:
        return ClaimResult(
            False,
            kind,
            f"modelseal cannot re-derive '{kind}' claims (re-derivable: {', '.join(KINDS)})",
            checkable=False,
        )
    claim = claim_from(kind, params)
    outcomes: list[ClaimOutcome] = []

    def capture(ctx: PairContext) -> Analysis:
        from scanner.claims.run import run_claim

        outcome = run_claim(claim, ctx.trusted, ctx.deployed, ctx.tensors)
        outcomes.append(outcome)
        from scanner.claims.rules import outcome_analysis

        return outcome_analysis([outcome])

    analyzers = [
        Analyzer("cast", analyze_casts),
        Analyzer("claims", capture),
        Analyzer("unexplained", analyze_unexplained),
    ]
    with open_artifact(input_path) as a, open_artifact(output_path) as b:
        result = diff_open(a, b, analyzers=analyzers)
    outcome = outcomes[0]
    serious = tuple(f for f in result.findings if f.severity >= Severity.MEDIUM)
    holds = outcome.holds and not serious
    if holds:
        message = f"{claim} holds on {len(outcome.verdicts)} tensors"
    elif not outcome.applicable:
        message = f"{claim} does not describe this pair"
    else:
        bad = [v.tensor for v in outcome.verdicts if not v.ok]
        others = [f for f in serious if not f.rule_id.startswith("MS4")]
        message = (
            f"{claim} fails: {len(bad)} tensors violate it"
            + (f" (e.g. {bad[0]})" if bad else "")
            + (f"; {len(others)} other changes unexplained" if others else "")
        )
    return ClaimResult(
        holds,
        claim.kind,
        message,
        result.findings,
        outcome.verdicts,
        str(claim),
        True,
        dict(outcome.evidence),
    )
