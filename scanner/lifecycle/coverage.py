"""Per step: the catalogue's threats that apply, the evidence that covers them, what
remains open, and what to add.

Configured gate checks (``pair``, ``scan``, ``probe``, and ``claim`` for re-derivable
step kinds) count as evidence. Attestations count only when supplied and verified: a
verified signed attestation of the step adds ``signature``; one whose claim was
re-derived (``claim: pass``) adds ``claim`` too. A required attestation that is missing
is named, and the threats only it would cover stay open.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.lifecycle.model import Lifecycle, Step
from scanner.lifecycle.threats import CATALOGUE, FULL, PARTIAL, REDERIVABLE, Threat, applicable

COVERED = "covered"
PARTIAL_STATUS = "partial"
OPEN = "open"

_KIND_ALIASES = {"export": ("export", "convert"), "deploy": ("deploy", "identical")}


@dataclass(frozen=True)
class StepAttestation:
    """A verified step attestation (or one that failed, with ``error`` set)."""

    source: str
    kind: str
    output: str = ""
    claim: str = ""
    signer: str = ""
    error: str = ""


@dataclass(frozen=True)
class ThreatStatus:
    threat: Threat
    status: str
    covered_by: tuple[str, ...]
    """Evidence present that covers it (``pair:full`` ...)."""
    missing: tuple[str, ...]
    """Evidence that would cover it fully and is not present."""


@dataclass(frozen=True)
class StepCoverage:
    step: Step
    evidence: tuple[str, ...]
    attestation: StepAttestation | None
    threats: tuple[ThreatStatus, ...]
    recommendations: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CoverageReport:
    lifecycle: Lifecycle
    steps: tuple[StepCoverage, ...]
    attestations: tuple[StepAttestation, ...] = ()
    unmatched: tuple[str, ...] = field(default_factory=tuple)

    def counts(self) -> dict[str, int]:
        out = {COVERED: 0, PARTIAL_STATUS: 0, OPEN: 0}
        for s in self.steps:
            for t in s.threats:
                out[t.status] += 1
        return out

    @property
    def coverage(self) -> float:
        c = self.counts()
        total = sum(c.values())
        return c[COVERED] / total if total else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "modelseal/lifecycle-coverage/v1",
            "lifecycle": self.lifecycle.name,
            "model": self.lifecycle.model,
            "counts": self.counts(),
            "coverage": round(self.coverage, 4),
            "steps": [
                {
                    "name": s.step.name,
                    "kind": s.step.kind,
                    "performer": s.step.performer,
                    "evidence": list(s.evidence),
                    "attestation": None if s.attestation is None else s.attestation.__dict__,
                    "threats": [
                        {
                            "id": t.threat.id,
                            "title": t.threat.title,
                            "reference": t.threat.reference,
                            "status": t.status,
                            "covered_by": list(t.covered_by),
                            "missing": list(t.missing),
                        }
                        for t in s.threats
                    ],
                    "recommendations": list(s.recommendations),
                    "notes": list(s.notes),
                }
                for s in self.steps
            ],
            "attestations": [a.__dict__ for a in self.attestations],
            "unmatched_attestations": list(self.unmatched),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def _match(step: Step, pool: list[StepAttestation]) -> StepAttestation | None:
    ok = [a for a in pool if not a.error]
    for a in ok:  # by output name first: unambiguous when the pipeline names artifacts
        if a.output and a.output in step.outputs:
            return a
    kinds = _KIND_ALIASES.get(step.kind, (step.kind,))
    return next((a for a in ok if a.kind in kinds and not a.output), None) or next(
        (a for a in ok if a.kind in kinds and (not step.outputs)), None
    )


def check_lifecycle(
    lifecycle: Lifecycle, attestations: Sequence[StepAttestation] | None = None
) -> CoverageReport:
    """Coverage of ``lifecycle``; ``attestations`` are the verified ones supplied (``None``
    when no folder was given)."""
    pool = list(attestations or ())
    steps = []
    used: set[str] = set()
    for step in lifecycle.steps:
        evidence: dict[str, str] = {}
        notes: list[str] = []
        recs: list[str] = []
        for check in step.checks:
            if check == "claim" and step.kind not in REDERIVABLE:
                notes.append(
                    f"'claim' is configured but a {step.kind} step cannot be "
                    "re-derived; it is not counted"
                )
                continue
            if check == "signature":
                continue  # a signature is evidence only once a verified one is supplied
            evidence[check] = "gate"
        att = _match(step, [a for a in pool if a.source not in used])
        if att is not None:
            used.add(att.source)
            evidence["signature"] = f"attestation {att.source}"
            if att.claim == "pass" and step.kind in REDERIVABLE:
                evidence["claim"] = f"attestation {att.source} (re-derived)"
        elif step.attestation or "signature" in step.checks:
            what = "supplied" if attestations is None else "found"
            recs.append(
                f"the signed attestation this step requires was not {what}: "
                f"`modelseal attest {step.kind} ...` by {step.performer}"
            )
        statuses = []
        for threat in CATALOGUE:
            if not applicable(threat, step.kind, step.format, step.third_party):
                continue
            full = tuple(k for k, v in threat.evidence.items() if v == FULL)
            part = tuple(k for k, v in threat.evidence.items() if v == PARTIAL)
            have = tuple(f"{k}:{threat.evidence[k]}" for k in threat.evidence if k in evidence)
            if any(k in evidence for k in full):
                status = COVERED
            elif any(k in evidence for k in part):
                status = PARTIAL_STATUS
            else:
                status = OPEN
            # Only claim-style evidence covers T1.x fully on a re-derivable step; a claim
            # listed for a fine-tune never reaches ``evidence`` (see above).
            missing = tuple(k for k in full if k not in evidence)
            statuses.append(ThreatStatus(threat, status, have, missing))
            if status != COVERED:
                rec = f"{threat.id} {threat.title}: {threat.recommendation}"
                if rec not in recs:
                    recs.append(rec)
        steps.append(
            StepCoverage(
                step, tuple(sorted(evidence)), att, tuple(statuses), tuple(recs), tuple(notes)
            )
        )
    unmatched = tuple(a.source for a in pool if a.source not in used)
    return CoverageReport(lifecycle, tuple(steps), tuple(pool), unmatched)


def read_attestations(folder: Path, verifier: Any) -> list[StepAttestation]:
    """Verify every ``*.json`` bundle in ``folder``; failures are kept with ``error`` (they
    are reported and never counted as evidence)."""
    from signing.attest import read_attestation
    from signing.errors import ModelsealError

    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            step = read_attestation(path.read_text(encoding="utf-8"), verifier, path.name)
        except (ModelsealError, OSError, UnicodeDecodeError) as exc:
            out.append(StepAttestation(path.name, "", error=str(exc)))
            continue
        st = step.statement
        out.append(
            StepAttestation(
                path.name, st.kind, st.output.name, st.claim.value, step.signer.describe()
            )
        )
    return out


def render_text(report: CoverageReport) -> str:
    marks = {COVERED: "covered", PARTIAL_STATUS: "PARTIAL", OPEN: "OPEN"}
    lines = [
        f"lifecycle {report.lifecycle.name}"
        + (f" ({report.lifecycle.model})" if report.lifecycle.model else "")
    ]
    for s in report.steps:
        st = s.step
        lines.append("")
        lines.append(
            f"step {st.name} [{st.kind}] by {st.performer}"
            f"{' (third party)' if st.third_party else ''}: "
            f"{', '.join(st.inputs) or '-'} -> {', '.join(st.outputs) or '-'}"
        )
        lines.append(
            f"  evidence: {', '.join(s.evidence) or 'none'}"
            + (
                f"; attestation {s.attestation.source} ({s.attestation.kind}, claim "
                f"{s.attestation.claim}, signer {s.attestation.signer})"
                if s.attestation
                else ("; attestation required, none verified" if st.attestation else "")
            )
        )
        for t in s.threats:
            by = f" by {', '.join(t.covered_by)}" if t.covered_by else ""
            lines.append(f"  {marks[t.status]:8} {t.threat.id} {t.threat.title}{by}")
        for n in s.notes:
            lines.append(f"  note: {n}")
        for r in s.recommendations:
            lines.append(f"  -> {r}")
    c = report.counts()
    total = sum(c.values())
    lines.append("")
    lines.append(
        f"coverage: {c[COVERED]}/{total} step threats covered "
        f"({report.coverage:.0%}), {c[PARTIAL_STATUS]} partial, {c[OPEN]} open"
    )
    bad = [a for a in report.attestations if a.error]
    for a in bad:
        lines.append(f"attestation {a.source} rejected: {a.error}")
    if report.unmatched:
        lines.append(f"attestations matching no step: {', '.join(report.unmatched)}")
    return "\n".join(lines) + "\n"


def summary_by_threat(report: CoverageReport) -> Mapping[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for s in report.steps:
        for t in s.threats:
            out.setdefault(t.threat.id, {COVERED: 0, PARTIAL_STATUS: 0, OPEN: 0})[t.status] += 1
    return out
