"""Render a :class:`~signing.chain.ChainReport` as a text tree, JSON or SARIF 2.1.0."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from typing import Any

from signing.chain import RULES, ChainReport, ChainStep

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


class ChainOutputFormat(str, Enum):
    """Output formats of ``verify-chain``."""

    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"


def _short(digest: str) -> str:
    return digest[:19] + ".." if len(digest) > 21 else digest


def format_text(report: ChainReport) -> str:
    """The chain as a tree from the deployed artifact back to its roots."""
    verdict = "PASS" if report.passed else ("ERROR" if not report.completed else "FAIL")
    lines = [f"{verdict}: chain {report.chain_id or '(unknown)'}"]
    root_set = set(report.roots)

    def producer(digest: str, seen: frozenset[str]) -> ChainStep | None:
        # Steps are listed roots first, so the last producer is the one nearest the
        # deployed artifact; an ``identical`` step outputs its own input digest, and its
        # input is the output of the step before it, not of itself.
        return next(
            (
                s
                for s in reversed(report.steps)
                if s.step.statement.output.digest == digest and s.source not in seen
            ),
            None,
        )

    def artifact(digest: str, name: str, prefix: str, seen: frozenset[str]) -> None:
        step = producer(digest, seen)
        label = f"{_short(digest)} {name}".rstrip()
        if digest in root_set and (step is None or not step.step.statement.inputs):
            label += "  [trusted root]"
        lines.append(prefix + label)
        if step is None:
            # Not produced by any step, or only by steps already on this branch (a cycle).
            if digest not in root_set and report.producer(digest) is None:
                lines.append(prefix + "  (no verified step produced this)")
            return
        st = step.step.statement
        lines.append(
            f"{prefix}  <- {st.kind} {dict(st.parameters) or ''}".rstrip()
            + f"  signed by {step.signer_name}; claim {step.recheck.status.value}"
            + f"  ({step.source})"
        )
        for ref in st.inputs:
            artifact(ref.digest, ref.name, prefix + "     ", seen | {step.source})

    artifact(report.deployed_digest, report.deployed_name, "", frozenset())
    for p in report.problems:
        lines.append(f"{p.rule} {p.message}")
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def to_dict(report: ChainReport) -> dict[str, Any]:
    """JSON-ready report."""
    return {
        "passed": report.passed,
        "completed": report.completed,
        "chain": report.chain_id,
        "checkedAt": report.checked_at.isoformat(),
        "deployed": {"digest": report.deployed_digest, "name": report.deployed_name},
        "roots": list(report.roots),
        "steps": [
            {
                "source": s.source,
                "kind": s.step.statement.kind,
                "parameters": dict(s.step.statement.parameters),
                "inputs": [i.digest for i in s.step.statement.inputs],
                "output": s.step.statement.output.digest,
                "signer": s.signer_name,
                "signerIdentity": s.step.signer.describe(),
                "claim": s.step.statement.claim.value,
                "recheck": {"status": s.recheck.status.value, "detail": s.recheck.detail},
                "attestation": s.step.payload_digest,
            }
            for s in report.steps
        ],
        "problems": [
            {"rule": p.rule, "message": p.message, "source": p.source} for p in report.problems
        ],
        "notes": list(report.notes),
    }


def format_json(report: ChainReport) -> str:
    """The report as indented JSON."""
    return json.dumps(to_dict(report), indent=2) + "\n"


def format_sarif(report: ChainReport) -> str:
    """SARIF 2.1.0: one result per problem; executionSuccessful tells whether it completed."""
    used = sorted({p.rule for p in report.problems})
    results = []
    for p in report.problems:
        result: dict[str, Any] = {
            "ruleId": p.rule,
            "ruleIndex": used.index(p.rule),
            "level": "error",
            "message": {"text": p.message},
        }
        if p.source:
            result["locations"] = [{"physicalLocation": {"artifactLocation": {"uri": p.source}}}]
        results.append(result)
    sarif = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "modelseal verify-chain",
                        "informationUri": "https://modelseal.dev",
                        "rules": [{"id": r, "shortDescription": {"text": RULES[r]}} for r in used],
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": report.completed,
                        "toolExecutionNotifications": [
                            {"message": {"text": n}, "level": "note"} for n in report.notes
                        ],
                    }
                ],
                "results": results,
            }
        ],
    }
    return json.dumps(sarif, indent=2) + "\n"


FORMATTERS: dict[ChainOutputFormat, Callable[[ChainReport], str]] = {
    ChainOutputFormat.TEXT: format_text,
    ChainOutputFormat.JSON: format_json,
    ChainOutputFormat.SARIF: format_sarif,
}


def render(report: ChainReport, fmt: ChainOutputFormat) -> str:
    """Render ``report`` in ``fmt``."""
    return FORMATTERS[fmt](report)
