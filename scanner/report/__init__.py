"""Report formats: each is ``render(report) -> str``; :class:`OutputFormat` lists them."""

from __future__ import annotations

from enum import Enum

from scanner.report.json_report import render_json
from scanner.report.model import REPORT_SCHEMA, ArtifactSummary, Report
from scanner.report.sarif import render_sarif
from scanner.report.text import render_text


class OutputFormat(str, Enum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"

    def __str__(self) -> str:
        return self.value


def render(report: Report, fmt: OutputFormat, *, color: bool = False, width: int = 120) -> str:
    if fmt is OutputFormat.TEXT:
        return render_text(report, color=color, width=width)
    if fmt is OutputFormat.JSON:
        return render_json(report)
    if fmt is OutputFormat.SARIF:
        return render_sarif(report)
    raise AssertionError(f"unhandled output format {fmt}")


__all__ = ["REPORT_SCHEMA", "ArtifactSummary", "OutputFormat", "Report", "render"]
