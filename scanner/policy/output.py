"""The rules pack's part of the text and SARIF outputs: pack name and suppressions.

SARIF has a native place for accepted findings: a result with ``suppressions``
(``kind: external``, ``status: accepted``, the reason as ``justification``). GitHub code
scanning shows such results as dismissed instead of dropping them, so the audit trail
stays in the dashboard.
"""

from __future__ import annotations

import dataclasses
import json

from scanner.policy.apply import PolicyReport
from scanner.report.model import Report


def policy_text(report: Report) -> str:
    """Lines appended to the text report: the pack and every suppressed finding."""
    if not isinstance(report, PolicyReport):
        return ""
    lines = [
        f"\nrules pack: {report.rules_pack}"
        + ("  (audit: findings never fail)" if report.never_fail else "")
    ]
    if report.suppressed:
        lines.append(f"suppressed findings ({len(report.suppressed)}):")
        for s in report.suppressed:
            until = s.suppression.expires.isoformat() if s.suppression.expires else "no expiry"
            lines.append(f"  {s.finding.rule_id}  {s.finding.message}")
            lines.append(
                f"      reason: {s.suppression.reason}  (until {until}; {s.suppression.source})"
            )
    return "\n".join(lines) + "\n"


def policy_sarif(text: str, report: Report) -> str:
    """Add the suppressed findings (as suppressed results) and the pack name to SARIF."""
    if not isinstance(report, PolicyReport):
        return text
    from scanner.report.sarif import render_sarif

    if report.suppressed:
        # Render kept and suppressed findings together, so rule descriptors, indices,
        # locations and fingerprints are computed the one way the SARIF module does it.
        fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(Report)}
        fields["findings"] = (*report.findings, *(s.finding for s in report.suppressed))
        doc = json.loads(render_sarif(Report(**fields)))
        results = doc["runs"][0]["results"]
        start = len(report.findings)
        for result, item in zip(results[start:], report.suppressed, strict=True):
            suppression = {
                "kind": "external",
                "status": "accepted",
                "justification": item.suppression.reason,
                "properties": {"source": item.suppression.source},
            }
            if item.suppression.expires is not None:
                suppression["properties"]["expires"] = item.suppression.expires.isoformat()
            result["suppressions"] = [suppression]
    else:
        doc = json.loads(text)
    run = doc["runs"][0]
    run["properties"] = {
        **run.get("properties", {}),
        "verdict": report.verdict,
        "rules_pack": report.rules_pack,
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"
