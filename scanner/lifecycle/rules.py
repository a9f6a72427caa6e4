"""Findings of ``modelseal lifecycle check`` (MS9xx), so its result can be judged by
``--fail-on`` and written as SARIF like every other report.

An open step threat is high, a partly covered one low, and a supplied attestation that
does not verify medium: the same scale as the artifact checks, so one threshold means
the same thing everywhere.
"""

from __future__ import annotations

from pathlib import Path

from scanner.findings import Finding, Location, Severity
from scanner.lifecycle.coverage import OPEN, PARTIAL_STATUS, CoverageReport
from scanner.rulebook import define_rule, finding

_REFS = ("docs/lifecycle.md", "docs/threats.md#lifecycle-steps")

THREAT_OPEN = define_rule(
    "MS901",
    "lifecycle-threat-open",
    Severity.HIGH,
    "A pipeline step's threat has no evidence covering it",
    checks="Every step of lifecycle.toml, against the threats of the catalogue that apply to "
    "its kind and format: a threat none of the step's evidence covers, fully or in part.",
    why="Nothing the pipeline records would notice that attack at that step: a signature, "
    "a re-derived claim, a pair diff, a scan or a probe each covers some threats only.",
    example="step `quantize` [quantize]: T3.3 unfaithful transformation (flipped codes) open.",
    fix="Add the evidence the recommendation names (for T3.3: a re-derived claim, `modelseal "
    "attest quantize` or `--claim` in the gate), or accept the risk in a rules pack.",
    references=_REFS,
)
THREAT_PARTIAL = define_rule(
    "MS902",
    "lifecycle-threat-partial",
    Severity.LOW,
    "A pipeline step's threat is only partly covered",
    checks="Step threats covered only by partial evidence (for example a scan for a replaced "
    "subnetwork, which a pair diff or a re-derived claim would cover fully).",
    why="Partial evidence catches some variants of the attack and misses others.",
    example="step `fine-tune` [fine-tune]: T4.1 regression or backdoor through continued "
    "training partly covered by pair:partial.",
    fix="Add full-cover evidence where the catalogue has one; some threats have none by "
    "design (a fine-tune's behaviour cannot be proven from artifacts).",
    references=_REFS,
)
ATTESTATION_REJECTED = define_rule(
    "MS903",
    "lifecycle-attestation-rejected",
    Severity.MEDIUM,
    "A supplied step attestation does not verify",
    checks="Every *.json bundle in --attestations, verified against the trusted signer.",
    why="An attestation that does not verify proves nothing and is not counted; it may be "
    "forged, signed by someone else, or damaged.",
    example="attestation 3-quantize.json rejected: signature does not verify with the trusted key.",
    fix="Re-sign the step with the trusted key, or pass the signer that made it.",
    references=("docs/attestations.md",),
)


def lifecycle_findings(
    report: CoverageReport, source: Path, attestations: Path | None = None
) -> list[Finding]:
    """One finding per open or partly covered step threat and per rejected attestation
    (``source`` is lifecycle.toml, ``attestations`` the folder the bundles came from)."""
    where = source.name
    out: list[Finding] = []
    for s in report.steps:
        for t in s.threats:
            if t.status == OPEN:
                rule, how = THREAT_OPEN, "open"
            elif t.status == PARTIAL_STATUS:
                rule, how = THREAT_PARTIAL, f"partly covered by {', '.join(t.covered_by)}"
            else:
                continue
            out.append(
                finding(
                    rule,
                    f"step {s.step.name} [{s.step.kind}]: {t.threat.id} {t.threat.title} {how}",
                    [Location(file=where, node=s.step.name)],
                    evidence={
                        "step": s.step.name,
                        "threat": t.threat.id,
                        "reference": t.threat.reference,
                        "missing": list(t.missing),
                        "recommendation": t.threat.recommendation,
                    },
                )
            )
    for a in report.attestations:
        if a.error:
            out.append(
                finding(
                    ATTESTATION_REJECTED,
                    f"attestation {a.source} rejected: {a.error}",
                    [Location(file=str(attestations / a.source) if attestations else a.source)],
                    evidence={"attestation": a.source},
                )
            )
    return out
