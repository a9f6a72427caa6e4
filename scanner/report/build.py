"""Turn analysis results into reports."""

from __future__ import annotations

from scanner.checks.single import ScanResult
from scanner.diff import DiffResult
from scanner.findings import Severity
from scanner.report.model import ArtifactSummary, Report, with_files


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
