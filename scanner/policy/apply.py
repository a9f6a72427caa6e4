"""Apply a rules pack to a finished report.

The pack is post-processing: checks report what they see with their catalogue
severities, and the pack decides what that means for this deployment (severity
overrides, per-tensor allowances, suppressions). Keeping it out of the checks means the
same diff can be judged by several packs, and a pack never changes what was measured.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scanner.diff.model import TensorDiff, TensorStatus
from scanner.findings import Finding, Location, Severity
from scanner.policy.pack import Pack, Suppression
from scanner.policy.rules import CLASS_NOT_ALLOWED, SUPPRESSION_EXPIRED
from scanner.report.model import Report
from scanner.rulebook import finding

# The class of a change that carries no classifier label, from the diff status alone.
_STATUS_CLASS = {
    TensorStatus.IDENTICAL: "identical",
    TensorStatus.CAST: "cast",
    TensorStatus.RENAMED: "renamed",
}


@dataclass(frozen=True)
class SuppressedFinding:
    """A finding a suppression accepted, kept in the output with the reason."""

    finding: Finding
    suppression: Suppression

    def to_dict(self) -> dict[str, Any]:
        return {"finding": self.finding.to_dict(), "suppression": self.suppression.to_dict()}


@dataclass(frozen=True)
class PolicyReport(Report):
    """A :class:`Report` judged by a rules pack: adds the pack name, the suppressed
    findings and "never fail" for audit packs. Renderers that know only ``Report`` still
    work; JSON gains the fields ``rules_pack`` and ``suppressed``."""

    rules_pack: str | None = None
    suppressed: tuple[SuppressedFinding, ...] = ()
    never_fail: bool = False

    def failing(self) -> list[Finding]:
        return [] if self.never_fail else super().failing()

    def to_dict(self) -> dict[str, Any]:
        from scanner.report.model import json_safe

        out = super().to_dict()
        out["rules_pack"] = self.rules_pack
        out["suppressed"] = json_safe([s.to_dict() for s in self.suppressed])
        if self.never_fail:
            out["fail_on"] = "never"
        return out


@dataclass(frozen=True)
class _Context:
    pack: Pack
    tensors: Mapping[str, TensorDiff]
    attested: bool
    today: dt.date
    signed: frozenset[str] = frozenset()
    """Classes a verified chain's signed, declared steps vouch for (count as claimed)."""
    notes: list[str] = field(default_factory=list)


def finding_tensors(f: Finding) -> list[str]:
    """Tensor names a finding is located in (deployed names first, no duplicates)."""
    return list(dict.fromkeys(loc.tensor for loc in f.locations if loc.tensor is not None))


def tensor_class(t: TensorDiff) -> str | None:
    """The change class of one tensor: the classifier's label, else what the status says."""
    label = t.labels.get("class")
    if isinstance(label, str):
        return label
    return _STATUS_CLASS.get(t.status)


def _claimed(t: TensorDiff | None, f: Finding | None, attested: bool) -> bool:
    """Backed by a re-derived claim (label or evidence ``claim``) or an attested chain."""
    if attested:
        return True
    if t is not None and t.labels.get("claim"):
        return True
    return f is not None and bool(f.evidence.get("claim"))


def apply_pack(
    report: Report,
    pack: Pack,
    *,
    attested: bool = False,
    signed: frozenset[str] = frozenset(),
    today: dt.date | None = None,
    fail_on: Severity | None = None,
) -> PolicyReport:
    """Judge ``report`` by ``pack``.

    ``attested`` says the deployed artifact's history verified as an attested chain of
    re-derived steps from the trusted artifact, so ``allow_claimed`` classes apply to
    every tensor; ``signed`` names classes a verified chain's declared steps (a signed
    fine-tune) vouch for, which count as claimed for those classes only. ``fail_on`` (an
    explicit ``--fail-on``) wins over the pack's.
    """
    ctx = _Context(
        pack=pack,
        tensors=_tensor_index(report.tensors),
        attested=attested,
        today=today or dt.date.today(),
        signed=frozenset(signed),
    )
    judged: list[Finding] = []
    disabled = 0
    for f in report.findings:
        out = _judge(f, ctx)
        if out is None:
            disabled += 1
        else:
            judged.append(out)
    judged.extend(_unallowed_classes(report.tensors, judged, ctx))
    kept, suppressed, expired = _suppress(judged, ctx)
    evidence = dict(report.evidence)
    evidence["policy"] = {
        "pack": pack.name,
        "lineage": list(pack.lineage),
        "source": pack.source,
        "disabled_findings": disabled,
        "unused_suppressions": [
            s.describe()
            for s in pack.suppressions
            if not any(x.suppression is s for x in suppressed) and s not in expired
        ],
    }
    return PolicyReport(
        command=report.command,
        artifacts=report.artifacts,
        findings=tuple(kept),
        fail_on=next(s for s in (fail_on, pack.fail_on, report.fail_on) if s is not None),
        tensors=report.tensors,
        classification=report.classification,
        evidence=evidence,
        seconds=report.seconds,
        error=report.error,
        rules_pack=pack.name,
        suppressed=tuple(suppressed),
        never_fail=pack.fail_on is None and fail_on is None,
    )


def _tensor_index(tensors: tuple[TensorDiff, ...]) -> dict[str, TensorDiff]:
    index: dict[str, TensorDiff] = {}
    for t in tensors:
        index[t.name] = t
        if t.deployed_name:
            index.setdefault(t.deployed_name, t)
    return index


def _judge(f: Finding, ctx: _Context) -> Finding | None:
    """The finding as the pack sees it, or ``None`` when its rule is disabled."""
    names = finding_tensors(f)
    settings = ctx.pack.settings(f.rule_id, names)
    if settings.enabled is False:
        return None
    severity = settings.severity if settings.severity is not None else f.severity
    policy: dict[str, Any] = {}
    for override in ctx.pack.overrides_for(names):
        if override.severity is not None:
            severity = override.severity
            policy["severity_by"] = f"tensors[{override.pattern!r}]"
    if severity != f.severity:
        policy["catalogue_severity"] = str(f.severity)
    allowance = _allowance(f, names, ctx)
    if allowance is not None and severity > Severity.INFO:
        cls, by = allowance
        policy.update(
            {"allowed_class": cls, "allowed_by": by, "severity_before_allow": str(severity)}
        )
        severity = Severity.INFO
    if not policy:
        return f
    return replace(f, severity=severity, evidence={**f.evidence, "policy": policy})


# Findings that report a tensor's change as such (unexplained, added, removed, reshaped,
# dtype-changed): they take the class the tensor was given when they carry none.
CHANGE_REPORT_RULES = frozenset({"MS201", "MS202", "MS203", "MS204", "MS205", "MS207"})


def _allowance(f: Finding, names: list[str], ctx: _Context) -> tuple[str, str] | None:
    """(class, where it is allowed) when every tensor of ``f`` has an allowed class."""
    cls_evidence = f.evidence.get("class")
    if not names:
        if not isinstance(cls_evidence, str):
            return None
        claimed = _claimed(None, f, ctx.attested) or cls_evidence in ctx.signed
        allowed, by = ctx.pack.allowed_classes(None, claimed=claimed)
        return (cls_evidence, by) if cls_evidence in allowed else None
    if not isinstance(cls_evidence, str) and f.rule_id not in CHANGE_REPORT_RULES:
        # A detector's finding (a gap attack, a trigger, non-finite values ...) is not
        # the change itself: the tensor also being, say, fine-tuned must not excuse it.
        return None
    sources = []
    for name in names:
        t = ctx.tensors.get(name)
        cls = (
            cls_evidence
            if isinstance(cls_evidence, str)
            else (tensor_class(t) if t is not None else None)
        )
        if cls is None:
            return None  # an unclassified change is never allowed by class
        claimed = _claimed(t, f, ctx.attested) or cls in ctx.signed
        allowed, by = ctx.pack.allowed_classes(name, claimed=claimed)
        if cls not in allowed:
            return None
        sources.append((cls, by))
    classes = sorted({c for c, _ in sources})
    return ", ".join(classes), ", ".join(sorted({b for _, b in sources}))


def _unallowed_classes(
    tensors: tuple[TensorDiff, ...], judged: list[Finding], ctx: _Context
) -> list[Finding]:
    """MS805 for classified changes the pack does not allow and no finding reports yet."""
    covered = {name for f in judged if f.severity > Severity.INFO for name in finding_tensors(f)}
    min_rel = ctx.pack.threshold(CLASS_NOT_ALLOWED.id, "min_rel_change", 0.0)
    out = []
    for t in tensors:
        if (
            t.status is TensorStatus.IDENTICAL
            or t.name in covered
            or (t.deployed_name and t.deployed_name in covered)
        ):
            continue
        cls = tensor_class(t)
        if cls is None or cls == "identical":
            continue
        if t.delta is not None and t.delta.rel_l2 <= min_rel and t.status is TensorStatus.CHANGED:
            continue
        if t.labels.get("allowed_by"):
            continue  # accepted on the command line (--allow): any one acceptance suffices
        claimed = _claimed(t, None, ctx.attested) or cls in ctx.signed
        allowed, by = ctx.pack.allowed_classes(t.name, claimed=claimed)
        if cls in allowed:
            continue
        settings = ctx.pack.settings(CLASS_NOT_ALLOWED.id, [t.name])
        if settings.enabled is False:
            continue
        severity = (
            settings.severity if settings.severity is not None else CLASS_NOT_ALLOWED.severity
        )
        for override in ctx.pack.overrides_for([t.name]):
            if override.severity is not None:
                severity = override.severity
        out.append(
            finding(
                CLASS_NOT_ALLOWED,
                f"{t.name}: {cls} is not allowed here by rules pack '{ctx.pack.name}' ({by} = "
                f"{list(allowed)})",
                [Location(artifact="deployed", tensor=t.deployed_name or t.name)],
                evidence={
                    "class": cls,
                    "allowed": list(allowed),
                    "decided_by": by,
                    "status": t.status.value,
                },
                severity=severity,
            )
        )
    return out


def _matches(s: Suppression, f: Finding) -> bool:
    import fnmatch

    if s.rule != f.rule_id:
        return False
    if s.tensor is not None:
        names = finding_tensors(f)
        if not names or not any(fnmatch.fnmatchcase(n, s.tensor) for n in names):
            return False
    if s.file is not None:
        files = [loc.file for loc in f.locations if loc.file]
        if not files or not any(fnmatch.fnmatchcase(x, s.file) for x in files):
            return False
    return True


def _suppress(
    findings: list[Finding], ctx: _Context
) -> tuple[list[Finding], list[SuppressedFinding], list[Suppression]]:
    kept: list[Finding] = []
    suppressed: list[SuppressedFinding] = []
    expired: list[Suppression] = []
    warn_days = ctx.pack.threshold(SUPPRESSION_EXPIRED.id, "warn_days", 14)
    for f in findings:
        match = next((s for s in ctx.pack.suppressions if _matches(s, f)), None)
        if match is None:
            kept.append(f)
        elif match.expired(ctx.today):
            kept.append(f)  # an expired suppression no longer hides anything
            if match not in expired:
                expired.append(match)
        else:
            suppressed.append(SuppressedFinding(f, match))
    settings = ctx.pack.settings(SUPPRESSION_EXPIRED.id)
    if settings.enabled is False:
        return kept, suppressed, expired
    for s in expired:
        assert s.expires is not None
        days = (ctx.today - s.expires).days
        kept.append(
            finding(
                SUPPRESSION_EXPIRED,
                f"suppression of {s.describe()} expired {days} day(s) ago; the finding it "
                "covered is reported again",
                evidence={"suppression": s.to_dict(), "days_expired": days},
                severity=settings.severity,
            )
        )
    soon = {
        x.suppression
        for x in suppressed
        if x.suppression.expires is not None
        and (x.suppression.expires - ctx.today).days <= warn_days
    }
    for s in sorted(soon, key=lambda s: (s.expires, s.rule)):  # type: ignore[arg-type,return-value]
        assert s.expires is not None
        kept.append(
            finding(
                SUPPRESSION_EXPIRED,
                f"suppression of {s.describe()} expires in {(s.expires - ctx.today).days} day(s)",
                evidence={"suppression": s.to_dict(), "days_left": (s.expires - ctx.today).days},
                severity=Severity.INFO,
                title="Suppression expires soon",
            )
        )
    return kept, suppressed, expired
