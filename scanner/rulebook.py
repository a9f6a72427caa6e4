"""The catalogue of rules. Every finding names a rule; every rule is documented.

Rule ids are permanent (``MS`` + three digits) and never reused. Ranges:
MS1xx artifact structure, MS2xx trusted-vs-deployed diff, MS3xx weight-change analysis,
MS4xx claimed transformations, MS5xx graph, MS6xx signatures and attestations,
MS7xx serialization (pickle), MS8xx gate and policy.
Check modules define their rules with :func:`define_rule` at import time and are listed
in :data:`RULE_MODULES` so :func:`all_rules` sees every one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scanner.findings import Finding, Location, Severity

RULE_MODULES: tuple[str, ...] = (
    "scanner.checks.structure",
    "scanner.checks.pair",
    "scanner.analysis.rules",
    "scanner.claims.rules",
    "scanner.graph.rules",
    "scanner.checks.serialization",
    "scanner.checks.manifest",
    "scanner.claims.gap",
    "scanner.policy.rules",
    "scanner.lifecycle.rules",
)


@dataclass(frozen=True)
class Threshold:
    """A tunable number a rule reads from the active rules pack (docs/rules-packs.md)."""

    key: str
    default: float | int | str | bool
    doc: str


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    severity: Severity
    title: str
    checks: str
    """What it does."""
    why: str
    """Why it matters."""
    example: str
    fix: str
    """How to fix it, or how to allow it when it is expected."""
    references: tuple[str, ...] = ()
    since: str = "0.1.0"
    tags: tuple[str, ...] = field(default_factory=tuple)
    thresholds: tuple[Threshold, ...] = ()
    """What a rules pack may tune for this rule, with the defaults used without a pack."""

    def threshold(self, key: str) -> Threshold | None:
        return next((t for t in self.thresholds if t.key == key), None)


RULES: dict[str, Rule] = {}


def define_rule(
    id: str,
    name: str,
    severity: Severity,
    title: str,
    *,
    checks: str,
    why: str,
    example: str,
    fix: str,
    references: Sequence[str] = (),
    since: str = "0.1.0",
    thresholds: Sequence[Threshold] = (),
) -> Rule:
    if id in RULES and RULES[id].name != name:
        raise ValueError(f"rule id {id} is already used by {RULES[id].name}")
    rule = Rule(
        id,
        name,
        severity,
        title,
        checks,
        why,
        example,
        fix,
        tuple(references),
        since,
        thresholds=tuple(thresholds),
    )
    RULES[id] = rule
    return rule


def all_rules() -> list[Rule]:
    for module in RULE_MODULES:
        importlib.import_module(module)
    return sorted(RULES.values(), key=lambda r: r.id)


def finding(
    rule: Rule,
    message: str,
    locations: Sequence[Location] = (),
    evidence: Mapping[str, Any] | None = None,
    severity: Severity | None = None,
    title: str | None = None,
) -> Finding:
    """A finding of ``rule`` (its default severity and title unless overridden)."""
    return Finding(
        rule_id=rule.id,
        severity=rule.severity if severity is None else severity,
        title=title or rule.title,
        message=message,
        locations=tuple(locations),
        evidence=dict(evidence or {}),
    )


def _severity_in(rule: Rule, pack: Any) -> Severity:
    if pack is None:
        return rule.severity
    settings = pack.rules.get(rule.id)
    return (
        settings.severity
        if settings is not None and settings.severity is not None
        else rule.severity
    )


def _thresholds_markdown(rule: Rule, pack: Any) -> str:
    if not rule.thresholds:
        return ""
    settings = pack.rules.get(rule.id) if pack is not None else None
    values = dict(settings.thresholds) if settings is not None else {}
    head = (
        "| threshold | default | in this pack | meaning |\n|---|---|---|---|\n"
        if pack
        else "| threshold | default | meaning |\n|---|---|---|\n"
    )
    rows = "".join(
        f"| `{t.key}` | `{t.default}` | `{values.get(t.key, t.default)}` | {t.doc} |\n"
        if pack
        else f"| `{t.key}` | `{t.default}` | {t.doc} |\n"
        for t in rule.thresholds
    )
    return (
        f"**Thresholds** (set in a rules pack, `[rules.{rule.id}] thresholds`).\n\n{head}{rows}\n"
    )


def rule_markdown(rule: Rule, pack: Any = None) -> str:
    """One rule's documentation; with ``pack`` (a :class:`scanner.policy.Pack`), also its
    severity, enablement and thresholds in that pack."""
    refs = "".join(f"- {r}\n" for r in rule.references)
    in_pack = ""
    if pack is not None:
        settings = pack.rules.get(rule.id)
        enabled = settings is None or settings.enabled is not False
        in_pack = (
            f" In pack `{pack.name}`: `{_severity_in(rule, pack)}`"
            f"{'' if enabled else ' (disabled)'}."
        )
    return (
        f"## {rule.id}\n\n"
        f"**{rule.name}**: {rule.title}. Default severity: `{rule.severity}`.{in_pack} "
        f"Since {rule.since}.\n\n"
        f"**What it checks.** {rule.checks}\n\n"
        f"**Why it matters.** {rule.why}\n\n"
        f"**Example.** {rule.example}\n\n"
        f"**Fix or allow.** {rule.fix}\n\n"
        + _thresholds_markdown(rule, pack)
        + (f"**References.**\n\n{refs}\n" if refs else "")
    )


def rules_markdown(pack: Any = None) -> str:
    """The text of docs/rules.md (generated; do not edit that file by hand); with
    ``pack``, the reference as that rules pack configures it."""
    rules = all_rules()
    if pack is None:
        index = "".join(
            f"| [{r.id}](#{r.id.lower()}) | {r.name} | {r.severity} | {r.title} |\n" for r in rules
        )
        head = "| id | name | default severity | title |\n|---|---|---|---|\n"
        title, intro, cmd = "# Rules", "", "modelseal rules docs -o docs/rules.md"
    else:
        index = "".join(
            f"| [{r.id}](#{r.id.lower()}) | {r.name} | {r.severity} | "
            f"{_severity_in(r, pack)} | {r.title} |\n"
            for r in rules
        )
        head = (
            f"| id | name | default severity | in `{pack.name}` | title |\n|---|---|---|---|---|\n"
        )
        title = f"# Rules in pack `{pack.name}`"
        intro = (
            f"{pack.description}\n\nFails on: `{pack.fail_on or 'never'}`. Allowed "
            f"change classes: {', '.join(pack.allow) or 'none'}; with a verified claim "
            f"or attested chain also: {', '.join(pack.allow_claimed) or 'none'}.\n\n"
        )
        cmd = f"modelseal rules docs --rules {pack.name}"
    body = "".join(rule_markdown(r, pack) for r in rules)
    return (
        f"{title}\n\n"
        f"<!-- Generated by `{cmd}`; do not edit. -->\n\n"
        f"{intro}"
        "Every finding modelseal reports names one of these rules. Ids are permanent and "
        "never reused.\n\n"
        f"{head}{index}\n{body}"
    )
