"""The deployment gate: every check that applies to a deployed artifact, one verdict.

Given the deployed artifact and whatever evidence is available (the trusted artifact,
a signature, step attestations with a chain policy), :func:`run_gate` verifies the
signature, verifies the attestation chain, diffs against the trusted artifact (with the
claimed transformations), scans the deployed artifact on its own, and judges all
findings by one rules pack. Signature and chain verification are the ``signing``
package's; this module only turns their outcomes into findings (MS801-MS803).

Fail closed: evidence that was supplied but cannot be read is an error (exit 2), never
a skipped step, and evidence the pack requires but that is missing is a finding (MS806).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scanner.checks.single import scan_open
from scanner.diff import diff_open
from scanner.findings import Finding, Location
from scanner.formats import open_artifact
from scanner.policy import Pack, PolicyReport, apply_pack, using
from scanner.policy.rules import CHAIN_FAILED, INPUT_MISSING, MODEL_NOT_AS_SIGNED, SIGNATURE_INVALID
from scanner.progress import NoProgress, Progress
from scanner.report.build import report_from_diff
from scanner.report.model import ArtifactSummary, Report, with_files
from scanner.rulebook import finding
from signing.errors import MalformedSignatureError, ModelsealError, VerificationError


@dataclass(frozen=True)
class GateRequest:
    """What the gate is asked to check; every field but ``deployed`` and ``pack`` is
    optional evidence."""

    deployed: Path
    pack: Pack
    trusted: Path | None = None
    signature: Path | None = None
    verifier: Any = None
    """A ``signing.verifiers.Verifier`` for ``signature`` (whom to trust)."""
    attestations: Path | None = None
    """Folder of step attestation bundles (``*.json``)."""
    chain_policy: Path | None = None
    """The chain policy (docs/policy.md) the attestations are verified against."""
    artifacts: tuple[Path, ...] = ()
    """Intermediate artifacts, so chain steps' claims can be re-derived."""
    claims: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    fail_on: Any = None
    """An explicit severity that wins over the pack's ``fail_on``."""
    trusted_root: object | None = None


@dataclass(frozen=True)
class _Evidence:
    findings: tuple[Finding, ...] = ()
    record: Mapping[str, Any] | None = None


def run_gate(
    request: GateRequest,
    *,
    progress: Progress | None = None,
    analyzers: Sequence[Any] | None = None,
    today: dt.date | None = None,
    now: dt.datetime | None = None,
) -> PolicyReport:
    """Run every check that applies and judge the findings by ``request.pack``."""
    progress = progress or NoProgress()
    findings: list[Finding] = []
    gate: dict[str, Any] = {"steps": []}
    with using(request.pack):
        missing = [
            name
            for name, given in (
                ("signature", request.signature),
                ("trusted", request.trusted),
                ("attestations", request.attestations),
            )
            if name in request.pack.require and given is None
        ]
        findings.extend(
            finding(
                INPUT_MISSING,
                f"rules pack '{request.pack.name}' requires {name}, and none was given",
                evidence={"input": name},
            )
            for name in missing
        )
        if request.signature is not None:
            sig = _signature(request)
            findings.extend(sig.findings)
            gate["signature"] = sig.record
            gate["steps"].append("signature")
        attested = False
        signed: frozenset[str] = frozenset()
        if request.attestations is not None:
            chain, attested, signed = _chain(request, now)
            findings.extend(chain.findings)
            gate["chain"] = chain.record
            gate["steps"].append("attestation chain")
        report = _analyse(request, progress, analyzers)
        gate["steps"].extend(["diff", "scan"] if request.trusted is not None else ["scan"])
        gate["attested"] = attested
        gate["signed_classes"] = sorted(signed)
        gate["checked"], gate["not_checked"] = _coverage(request, gate)
        fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(Report)}
        fields.update(
            command="gate",
            findings=(*findings, *report.findings),
            evidence={**report.evidence, "gate": gate},
        )
        return apply_pack(
            Report(**fields),
            request.pack,
            attested=attested,
            signed=signed,
            today=today,
            fail_on=request.fail_on,
        )


def _coverage(request: GateRequest, gate: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """What the gate checked (with the verified signer and chain) and what it did not,
    in sentences for the report."""
    checked: list[str] = []
    skipped: list[str] = []
    sig = gate.get("signature")
    if isinstance(sig, Mapping):
        if sig.get("verified"):
            checked.append(f"signature {sig.get('path')}: verified, signed by {sig.get('signer')}")
        else:
            checked.append(f"signature {sig.get('path')}: NOT verified ({sig.get('error')})")
    else:
        skipped.append("signature (no --signature given)")
    chain = gate.get("chain")
    if isinstance(chain, Mapping):
        steps = [s for s in chain.get("steps", ()) if isinstance(s, Mapping)]
        signers = sorted({str(s.get("signer")) for s in steps})
        kinds = " -> ".join(str(s.get("kind")) for s in steps)
        state = "verified" if chain.get("passed") else "NOT verified"
        checked.append(
            f"attestation chain {chain.get('chain')}: {state}, {len(steps)} step"
            f"{'' if len(steps) == 1 else 's'} ({kinds or 'none'}) signed by "
            f"{', '.join(signers) or 'nobody'}"
        )
    else:
        skipped.append("attestation chain (no --attestations given)")
    if request.trusted is not None:
        claims = f" with claims {', '.join(request.claims)}" if request.claims else ""
        checked.append(f"diff against the trusted artifact {request.trusted}{claims}")
    else:
        skipped.append("diff against a trusted artifact (no --trusted given)")
    checked.append(f"scan of {request.deployed} (serialization, structure, graph)")
    return checked, skipped


def _signature(request: GateRequest) -> _Evidence:
    from signing.oms import resolve_cli_ignore_paths

    assert request.signature is not None
    if request.verifier is None:
        raise ModelsealError(
            "a signature was given but no trusted signer: pass --public-key, "
            "--certificate-chain or --identity (or set them in modelseal.toml)"
        )
    ignore = resolve_cli_ignore_paths(request.deployed, [request.signature])
    findings, record = check_signature(
        request.deployed, request.signature, request.verifier, ignore=ignore
    )
    return _Evidence(findings, record)


def check_signature(
    deployed: Path, signature: Path, verifier: Any, *, ignore: Sequence[str] = ()
) -> tuple[tuple[Finding, ...], dict[str, Any]]:
    """Verify ``signature`` over ``deployed`` with ``verifier`` (whom to trust).

    A bad signature or a model that differs from what was signed is a finding (MS801,
    MS802); a bundle that cannot be read raises. ``ignore`` lists model-relative paths
    left out of the comparison (the signature file itself when it lies in the model).
    Returns the findings and a record of the check for the report's evidence.
    """
    from scanner.manifest import build_manifest
    from signing.bundle import read_bundle_text
    from signing.model_signature import ModelMismatchError, verify_model

    bundle = read_bundle_text(signature)
    where = [Location(artifact="deployed")]
    record: dict[str, Any] = {"path": str(signature), "verified": False}
    try:
        verified = verify_model(
            deployed,
            bundle,
            verifier,
            ignore_paths=ignore,
            tensor_builder=build_manifest,
            source=str(signature),
        )
    except ModelMismatchError as exc:
        record["error"] = str(exc)
        locations = [
            Location(artifact="deployed", tensor=d.name)
            if d.kind.startswith("tensor-")
            else Location(artifact="deployed", file=d.name)
            for d in exc.discrepancies[:50]
        ]
        return (
            finding(
                MODEL_NOT_AS_SIGNED,
                str(exc),
                locations or where,
                evidence={"discrepancies": [d.describe() for d in exc.discrepancies[:200]]},
            ),
        ), record
    except MalformedSignatureError:
        raise  # an unreadable signature is an error of the input, not a failed check
    except VerificationError as exc:
        record["error"] = str(exc)
        return (
            finding(
                SIGNATURE_INVALID,
                f"{signature}: {exc}",
                where,
                evidence={"signature": str(signature)},
            ),
        ), record
    record.update(
        verified=True, signer=verified.signer.describe(), model=verified.manifest.model_name
    )
    return (), record


# Step kinds that cannot be re-derived, and the change classes a verified, signed step of
# that kind vouches for (the pack still decides: they count as claimed, so they pass
# only where the pack's ``allow_claimed`` lists them).
SIGNED_STEP_CLASSES = {
    "fine-tune": ("full fine-tune", "low-rank update", "rounding noise"),
    "train": ("full fine-tune", "low-rank update", "rounding noise"),
}


def _chain(request: GateRequest, now: dt.datetime | None) -> tuple[_Evidence, bool, frozenset[str]]:
    from scanner.claims_bridge import check_step
    from scanner.manifest import build_manifest
    from signing.attest import CheckStatus
    from signing.chain import read_attestations, verify_chain
    from signing.chain_output import to_dict
    from signing.chain_policy import load_policy

    assert request.attestations is not None
    if request.chain_policy is None:
        raise ModelsealError(
            "attestations were given without a chain policy: pass "
            "--chain-policy policy.toml (docs/policy.md)"
        )
    policy = load_policy(request.chain_policy)
    texts = read_attestations(request.attestations)
    trusted_root = request.trusted_root
    if trusted_root is None and (policy.trust_config or policy.trusted_root):
        from signing.sigstore_keyless import load_trusted_root

        trusted_root = load_trusted_root(
            trust_config=policy.trust_config,
            trusted_root=None if policy.trust_config else policy.trusted_root,
        )
    deployed = build_manifest(request.deployed)
    known = [*request.artifacts, *([request.trusted] if request.trusted else [])]
    artifacts = {build_manifest(p).root_digest: p for p in known}
    trusted_digest = next((d for d, p in artifacts.items() if p == request.trusted), None)
    report = verify_chain(
        deployed,
        texts,
        policy,
        checker=check_step,
        artifacts=artifacts,
        deployed_path=request.deployed,
        deployed_name=request.deployed.name,
        trusted_root=trusted_root,
        now=now,
    )
    if not report.completed:
        raise VerificationError("the attestation chain could not be verified to the end")
    findings = tuple(
        finding(
            CHAIN_FAILED,
            f"{p.rule}: {p.message}",
            [Location(artifact="deployed")],
            evidence={"chain_rule": p.rule, "attestation": p.source},
        )
        for p in report.problems
    )
    # Attested means: the chain verified, every step on it was re-derived (not just
    # declared), and it starts at the trusted artifact the diff compares against.
    rooted = report.passed and (request.trusted is None or trusted_digest in report.roots)
    attested = (
        rooted
        and bool(report.steps)
        and all(s.recheck.status is CheckStatus.PASS for s in report.steps)
    )
    # A verified chain from the trusted artifact vouches, by its signers, for the classes
    # of its declared (not re-derivable) steps.
    signed = frozenset(
        c
        for s in report.steps
        if rooted
        for c in SIGNED_STEP_CLASSES.get(s.step.statement.kind, ())
    )
    return _Evidence(findings, to_dict(report)), attested, signed


def _analyse(request: GateRequest, progress: Progress, analyzers: Sequence[Any] | None) -> Report:
    """Diff against the trusted artifact when there is one, and scan the deployed one."""
    options = {"claims": list(request.claims), "allow": list(request.allow), "policy": request.pack}
    with open_artifact(request.deployed) as deployed:
        single = scan_open(deployed)
        scan_findings = tuple(
            with_files(_on_deployed(f), {"deployed": deployed}) for f in single.findings
        )
        if request.trusted is None:
            return Report(
                command="gate",
                artifacts=(ArtifactSummary.of("deployed", deployed),),
                findings=scan_findings,
                seconds=single.seconds,
            )
        with open_artifact(request.trusted) as trusted:
            result = diff_open(
                trusted, deployed, options=options, progress=progress, analyzers=analyzers
            )
            report = report_from_diff(result)
    return replace(
        report, findings=(*report.findings, *scan_findings), seconds=report.seconds + single.seconds
    )


def _on_deployed(f: Finding) -> Finding:
    """Single-artifact findings name no side; in the gate they are about the deployed."""
    locations = tuple(
        replace(loc, artifact="deployed") if loc.artifact is None else loc for loc in f.locations
    )
    return replace(f, locations=locations or (Location(artifact="deployed"),))
