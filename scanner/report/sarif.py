"""SARIF 2.1.0 for code-scanning dashboards (GitHub and others).

Artifact URIs are relative to the current folder; every rule used carries its help
text and a ``security-severity``; fingerprints are stable across runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from scanner import __version__
from scanner.findings import Finding, Location, Severity
from scanner.policy.apply import PolicyReport, SuppressedFinding
from scanner.report.model import Report, file_uri, json_safe
from scanner.rulebook import RULES, Rule, all_rules

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


def _relative_uri(path: str) -> str:
    rel = os.path.relpath(Path(path).absolute(), Path.cwd())
    return Path(rel).as_posix()


def _rule_descriptor(rule: Rule) -> dict[str, Any]:
    help_md = (
        f"**What it checks.** {rule.checks}\n\n**Why it matters.** {rule.why}\n\n"
        f"**Example.** {rule.example}\n\n**Fix or allow.** {rule.fix}"
    )
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.checks},
        "help": {"text": help_md.replace("**", ""), "markdown": help_md},
        "helpUri": f"https://github.com/modelseal/modelseal/blob/main/docs/rules.md#{rule.id.lower()}",
        "defaultConfiguration": {"level": _LEVEL[rule.severity]},
        "properties": {
            "security-severity": SECURITY_SEVERITY[rule.severity],
            "tags": ["security", "model-integrity"],
        },
    }


def _location(report: Report, loc: Location) -> dict[str, Any]:
    out: dict[str, Any] = {}
    uri = file_uri(report, loc)
    if uri is not None:
        physical: dict[str, Any] = {"artifactLocation": {"uri": _relative_uri(uri)}}
        if loc.offset is not None:
            physical["region"] = {"byteOffset": loc.offset}
        out["physicalLocation"] = physical
    logical = []
    if loc.tensor is not None:
        logical.append(
            {
                "name": loc.tensor,
                "kind": "member",
                "fullyQualifiedName": f"{loc.artifact or 'artifact'}:{loc.tensor}",
            }
        )
    if loc.node is not None:
        logical.append(
            {
                "name": loc.node,
                "kind": "function",
                "fullyQualifiedName": f"{loc.artifact or 'artifact'}:node:{loc.node}",
            }
        )
    if logical:
        out["logicalLocations"] = logical
    if loc.region is not None:
        out["properties"] = {"region": loc.region.to_dict()}
    return out


def _fingerprint(f: Finding) -> str:
    where = "|".join(f"{loc.artifact}:{loc.file}:{loc.tensor}:{loc.node}" for loc in f.locations)
    return hashlib.sha256(f"{f.rule_id}|{where}".encode()).hexdigest()[:32]


def _suppression(item: SuppressedFinding) -> dict[str, Any]:
    """SARIF's native form of an accepted finding: code-scanning dashboards show it as
    dismissed instead of dropping it, so the audit trail stays visible."""
    suppression: dict[str, Any] = {
        "kind": "external",
        "status": "accepted",
        "justification": item.suppression.reason,
        "properties": {"source": item.suppression.source},
    }
    if item.suppression.expires is not None:
        suppression["properties"]["expires"] = item.suppression.expires.isoformat()
    return suppression


def _result(report: Report, f: Finding) -> dict[str, Any]:
    return {
        "ruleId": f.rule_id,
        "level": _LEVEL[f.severity],
        "message": {"text": f.message},
        "locations": [_location(report, loc) for loc in f.locations]
        or [_location(report, Location())],
        "partialFingerprints": {"modelsealFinding/v1": _fingerprint(f)},
        "properties": {
            "severity": str(f.severity),
            "security-severity": SECURITY_SEVERITY[f.severity],
            "evidence": json_safe(dict(f.evidence)),
        },
    }


def sarif_document(run: dict[str, Any]) -> str:
    """The SARIF 2.1.0 log holding one run, as written to a file."""
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def render_sarif(report: Report) -> str:
    """One SARIF run for ``report``; a report judged by a rules pack also carries its
    suppressed findings (as suppressed results) and the pack's name."""
    all_rules()
    suppressed = report.suppressed if isinstance(report, PolicyReport) else ()
    findings = (*report.findings, *(s.finding for s in suppressed))
    used = sorted({f.rule_id for f in findings})
    rules = [RULES[r] for r in used if r in RULES]
    index = {r.id: i for i, r in enumerate(rules)}
    results = [_result(report, f) for f in report.findings]
    for item in suppressed:
        results.append({**_result(report, item.finding), "suppressions": [_suppression(item)]})
    for result in results:
        if result["ruleId"] in index:
            result["ruleIndex"] = index[result["ruleId"]]
    invocation: dict[str, Any] = {"executionSuccessful": report.error is None}
    if report.error is not None:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": report.error}}
        ]
    properties: dict[str, Any] = {
        "verdict": report.verdict,
        "classification": report.classification,
    }
    if isinstance(report, PolicyReport):
        properties["rules_pack"] = report.rules_pack
    run = {
        "tool": {
            "driver": {
                "name": "modelseal",
                "version": __version__,
                "informationUri": "https://github.com/modelseal/modelseal",
                "rules": [_rule_descriptor(r) for r in rules],
            }
        },
        "invocations": [invocation],
        "artifacts": [
            {"location": {"uri": _relative_uri(a.path)}, "roles": ["analysisTarget"]}
            for a in report.artifacts
        ],
        "results": results,
        "properties": properties,
    }
    return sarif_document(run)
