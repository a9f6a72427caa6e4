"""Turn analysis results into reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from scanner.findings import Severity
from scanner.report.model import ArtifactSummary, Report, with_files

if TYPE_CHECKING:
    from scanner.checks.single import ScanResult
    from scanner.diff import DiffResult


def report_from_diff(result: DiffResult, fail_on: Severity = Severity.MEDIUM) -> Report:
    arts = {"trusted": result.trusted, "deployed": result.deployed}
    return Report(
        command="diff",
        artifacts=(
            ArtifactSummary.of("trusted", result.trusted),
            ArtifactSummary.of("deployed", result.deployed),
        ),
        findings=tuple(with_files(f, arts) for f in result.findings),
        fail_on=fail_on,
        tensors=result.tensors,
        classification=result.classification,
        evidence=result.evidence,
        seconds=result.seconds,
    )


def report_from_scan(result: ScanResult, fail_on: Severity = Severity.MEDIUM) -> Report:
    arts = {"scanned": result.artifact}
    return Report(
        command="scan",
        artifacts=(ArtifactSummary.of("scanned", result.artifact),),
        findings=tuple(with_files(f, arts) for f in result.findings),
        fail_on=fail_on,
        seconds=result.seconds,
    )


def with_notes(report: Report, notes: Sequence[str]) -> Report:
    """``report`` with ``notes`` (things the user asked for that did not apply) in its
    evidence; the text report prints them, JSON carries them under ``evidence.notes``."""
    if not notes:
        return report
    known = list(report.evidence.get("notes", ()))
    return replace(report, evidence={**report.evidence, "notes": [*known, *notes]})
