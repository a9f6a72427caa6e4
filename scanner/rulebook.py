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
    "scanner.checks.weights",
    "scanner.checks.claims",
    "scanner.checks.graph",
)


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
) -> Rule:
    if id in RULES and RULES[id].name != name:
        raise ValueError(f"rule id {id} is already used by {RULES[id].name}")
    rule = Rule(id, name, severity, title, checks, why, example, fix, tuple(references), since)
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
