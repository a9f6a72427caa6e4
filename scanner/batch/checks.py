"""What each job kind runs, through the library API, and the report it yields.

``diff`` and ``scan`` are exactly ``modelseal diff`` and ``modelseal scan``; ``verify``
checks a signature (as ``modelseal gate`` does: MS801/MS802) and/or a trusted manifest
(MS601). A job's rules pack is active while it runs and judges its report, as
``--rules`` does on the command line.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from scanner.api import diff_artifacts, open_artifact, scan_artifact
from scanner.batch.jobs import Job
from scanner.checks.manifest import check_manifest, read_manifest
from scanner.diff.options import DiffOptions
from scanner.findings import Finding, Severity
from scanner.gate import check_signature
from scanner.policy import apply_pack
from scanner.report.build import report_from_diff, report_from_scan
from scanner.report.model import ArtifactSummary, Report


def run_job(job: Job, pack: Any = None, public_key_pem: bytes | None = None) -> Report:
    """The job's report, judged by its rules pack and ``fail_on``."""
    if job.kind == "diff":
        assert job.trusted is not None
        options = DiffOptions(claims=tuple(job.claims), allow=tuple(job.allow))
        report = report_from_diff(diff_artifacts(job.trusted, job.deployed, options=options))
    elif job.kind == "scan":
        report = report_from_scan(scan_artifact(job.deployed))
    elif job.kind == "verify":
        report = _verify(job, public_key_pem)
    else:
        raise ValueError(f"unknown job kind {job.kind!r}")
    fail_on = Severity.parse(job.fail_on) if job.fail_on else None
    if pack is not None:
        return apply_pack(report, pack, fail_on=fail_on)
    return dataclasses.replace(report, fail_on=fail_on) if fail_on is not None else report


def _verify(job: Job, public_key_pem: bytes | None) -> Report:
    from signing.oms import resolve_cli_ignore_paths

    deployed = Path(job.deployed)
    # Evidence kept inside the model folder is not part of the model.
    evidence_files = [Path(p) for p in (job.signature, job.manifest) if p is not None]
    ignore = resolve_cli_ignore_paths(deployed, evidence_files)
    findings: list[Finding] = []
    evidence: dict[str, Any] = {}
    if job.signature is not None:
        findings.extend(_signature(deployed, Path(job.signature), public_key_pem, ignore, evidence))
    if job.manifest is None:
        return Report("verify", (_unparsed_summary(deployed),), tuple(findings), evidence=evidence)
    trusted = read_manifest(Path(job.manifest))
    with open_artifact(deployed) as artifact:
        findings.extend(check_manifest(artifact, trusted, ignore=ignore))
        summary = ArtifactSummary.of("deployed", artifact)
    evidence["manifest"] = {"path": job.manifest, "trusted_digest": trusted.root_digest}
    return Report("verify", (summary,), tuple(findings), evidence=evidence)


def _signature(
    deployed: Path,
    signature: Path,
    public_key_pem: bytes | None,
    ignore: tuple[str, ...],
    evidence: dict[str, Any],
) -> tuple[Finding, ...]:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from signing.verifiers import PublicKeyVerifier

    if public_key_pem is None:
        raise ValueError("a signature job was sent without its public key")
    verifier = PublicKeyVerifier(load_pem_public_key(public_key_pem))  # type: ignore[arg-type]
    findings, record = check_signature(deployed, signature, verifier, ignore=ignore)
    evidence["signature"] = record
    return findings


def _unparsed_summary(path: Path) -> ArtifactSummary:
    """A signature covers files, whatever their format: the model is not parsed."""
    if path.is_dir():
        files = sum(len(names) for _, _, names in os.walk(path))
        root = path
    else:
        files, root = 1, path.parent
    return ArtifactSummary("deployed", str(path), str(root), "unparsed", files, 0, 0)
