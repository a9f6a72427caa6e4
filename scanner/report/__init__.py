"""Report formats: each is ``render(report) -> str``; :class:`OutputFormat` lists them."""

from __future__ import annotations

from enum import Enum

from scanner.report.html import render_html
from scanner.report.json_report import render_json
from scanner.report.model import REPORT_SCHEMA, ArtifactSummary, Report
from scanner.report.sarif import render_sarif
from scanner.report.text import render_text


class OutputFormat(str, Enum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"
    HTML = "html"

    def __str__(self) -> str:
        return self.value


def render(report: Report, fmt: OutputFormat, *, color: bool = False, width: int = 120) -> str:
    # A report judged by a rules pack carries suppressions and the pack name; the text
    # and SARIF renderers know only Report, so the policy module adds its part.
    from scanner.policy.output import policy_sarif, policy_text

    if fmt is OutputFormat.TEXT:
        return render_text(report, color=color, width=width) + policy_text(report)
    if fmt is OutputFormat.JSON:
        return render_json(report)
    if fmt is OutputFormat.SARIF:
        return policy_sarif(render_sarif(report), report)
    if fmt is OutputFormat.HTML:
        return render_html(report)
    raise AssertionError(f"unhandled output format {fmt}")


__all__ = ["REPORT_SCHEMA", "ArtifactSummary", "OutputFormat", "Report", "render"]
