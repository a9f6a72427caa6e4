"""Report formats: each is ``render(report) -> str``; :class:`OutputFormat` lists them."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scanner.report.model import Report


class OutputFormat(str, Enum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"
    HTML = "html"

    def __str__(self) -> str:
        return self.value


def render(report: Report, fmt: OutputFormat, *, color: bool = False, width: int = 120) -> str:
    # Renderers are imported here, not at module level: the command line imports this
    # module to list the formats, and `--help` must not pay for rich and numpy.
    if fmt is OutputFormat.TEXT:
        from scanner.report.text import policy_text, render_text

        return render_text(report, color=color, width=width) + policy_text(report)
    if fmt is OutputFormat.JSON:
        from scanner.report.json_report import render_json

        return render_json(report)
    if fmt is OutputFormat.SARIF:
        from scanner.report.sarif import render_sarif

        return render_sarif(report)
    if fmt is OutputFormat.HTML:
        from scanner.report.html import render_html

        return render_html(report)
    raise AssertionError(f"unhandled output format {fmt}")


_MODEL_NAMES = ("REPORT_SCHEMA", "ArtifactSummary", "Report")


def __getattr__(name: str) -> Any:
    if name in _MODEL_NAMES:
        from scanner.report import model

        return getattr(model, name)
    raise AttributeError(f"module 'scanner.report' has no attribute {name!r}")


__all__ = ["REPORT_SCHEMA", "ArtifactSummary", "OutputFormat", "Report", "render"]
