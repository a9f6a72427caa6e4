"""``modelseal scan``: open one artifact (structural validation) and run single checks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from scanner.artifact import Artifact
from scanner.checks.serialization import check_serialization
from scanner.checks.structure import (
    check_external_data,
    check_metadata_size,
    check_non_finite,
    check_onnx_domains,
)
from scanner.claims.gap import check_quantization_gap
from scanner.findings import Finding
from scanner.formats import open_artifact
from scanner.graph.rules import check_graph_backdoors

SingleCheck = Callable[[Artifact], Iterable[Finding]]

SINGLE_CHECKS: list[SingleCheck] = [
    check_non_finite,
    check_onnx_domains,
    check_external_data,
    check_metadata_size,
    check_serialization,
    check_graph_backdoors,
    check_quantization_gap,
]


@dataclass(frozen=True)
class ScanResult:
    artifact: Artifact
    findings: tuple[Finding, ...]
    seconds: float


def scan_open(artifact: Artifact, checks: Iterable[SingleCheck] | None = None) -> ScanResult:
    started = time.perf_counter()
    findings: list[Finding] = []
    for check in checks if checks is not None else SINGLE_CHECKS:
        findings.extend(check(artifact))
    return ScanResult(artifact, tuple(findings), time.perf_counter() - started)


def scan_artifact(path: str | Path, checks: Iterable[SingleCheck] | None = None) -> ScanResult:
    with open_artifact(path) as artifact:
        return scan_open(artifact, checks)
