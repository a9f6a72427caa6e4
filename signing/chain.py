"""Verify a chain of step attestations from trusted roots to a deployed artifact.

Pure core: attestation texts, the deployed manifest and a policy in, a
:class:`ChainReport` out. Every problem carries a permanent rule id (docs/policy.md).
Fails closed: a step that cannot be verified is a problem, never skipped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from signing.attest import (
    CheckResult,
    CheckStatus,
    ClaimChecker,
    StepStatement,
    VerifiedStep,
    parse_verified,
)
from signing.bundle import MaterialKind, ParsedBundle, UnsignedError, parse_bundle
from signing.chain_policy import ChainPolicy, PolicySigner
from signing.errors import ModelsealError, VerificationError
from signing.manifest import Manifest
from signing.oms import Discrepancy
from signing.verifiers import (
    PublicKeyVerifier,
    VerifiedPayload,
    WrongSignerError,
)

RULES: Mapping[str, str] = {
    "MSC001": "attestation is not signed",
    "MSC002": "attestation signature does not verify (statement altered or forged)",
    "MSC003": "attestation signed by a signer the policy does not list",
    "MSC004": "signer not allowed to sign this step kind",
    "MSC005": "step kind not allowed by the policy",
    "MSC006": "deployed artifact is not the output of any attested step",
    "MSC007": "missing link: input is neither a trusted root nor a verified step's output",
    "MSC008": "attestations form a cycle",
    "MSC009": "attestation belongs to another chain (replayed)",
    "MSC010": "claim re-check failed",
    "MSC011": "claim could not be re-checked",
    "MSC012": "policy not valid at verification time",
    "MSC013": "attestation made outside the policy validity window",
    "MSC014": "parent attestation not found",
    "MSC015": "attestation is malformed",
}


@dataclass(frozen=True)
class ChainProblem:
    """One reason the chain fails; ``rule`` is a permanent id from :data:`RULES`."""

    rule: str
    message: str
    source: str = ""


@dataclass(frozen=True)
class ChainStep:
    """A verified step on the chain and how its claim stood up."""

    source: str
    step: VerifiedStep
    signer_name: str
    recheck: CheckResult


@dataclass(frozen=True)
class ChainReport:
    """Outcome of :func:`verify_chain`."""

    deployed_digest: str
    deployed_name: str
    chain_id: str
    steps: tuple[ChainStep, ...]
    """Steps on the path from the roots to the deployed artifact, roots first."""
    roots: tuple[str, ...]
    problems: tuple[ChainProblem, ...]
    notes: tuple[str, ...] = ()
    completed: bool = True
    checked_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def passed(self) -> bool:
        """True only if verification completed and found no problem."""
        return self.completed and not self.problems

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail, 2 could not complete."""
        if not self.completed:
            return 2
        return 0 if self.passed else 1

    def producer(self, digest: str) -> ChainStep | None:
        """The step on the chain whose output is ``digest``."""
        return next((s for s in self.steps if s.step.statement.output.digest == digest), None)


def read_attestations(folder: Path) -> dict[str, str]:
    """The text of every ``*.json`` attestation in ``folder``, by file name."""
    if not folder.is_dir():
        raise ModelsealError(f"attestation folder {folder} does not exist")
    texts = {}
    for path in sorted(folder.glob("*.json")):
        try:
            texts[path.name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelsealError(f"cannot read attestation {path}: {exc}") from None
    if not texts:
        raise ModelsealError(f"no attestation (*.json) in {folder}")
    return texts


def _verify_with_policy(
    bundle: ParsedBundle, policy: ChainPolicy, trusted_root: object | None
) -> tuple[VerifiedPayload, PolicySigner]:
    """Find the policy signer that made ``bundle`` and verify with it."""
    candidates: list[tuple[PolicySigner, Callable[[ParsedBundle], VerifiedPayload]]] = []
    if bundle.material is MaterialKind.PUBLIC_KEY:
        for s in policy.signers:
            if s.public_key is not None and (not bundle.key_hint or bundle.key_hint == s.key_id):
                candidates.append((s, PublicKeyVerifier(s.public_key).verify))
        if not candidates:
            raise WrongSignerError(
                f"signed by key {bundle.key_hint[:16] or '(no hint)'}, which the policy "
                "does not list"
            )
    elif bundle.material is MaterialKind.X509_CHAIN:
        candidates = [(s, s.certificate_verifier().verify) for s in policy.signers if s.anchors]
    else:
        from signing.sigstore_keyless import IdentityPolicy, SigstoreVerifier

        sigstore_signers = [s for s in policy.signers if s.identity]
        if sigstore_signers and trusted_root is None:
            raise VerificationError(
                "a Sigstore-signed attestation needs a trust root: set trust_config in the "
                "policy or pass --trust-config/--trusted-root"
            )
        candidates = [
            (s, SigstoreVerifier(trusted_root, (IdentityPolicy(s.identity, s.issuer),)).verify)  # type: ignore[arg-type]
            for s in sigstore_signers
        ]
    last: WrongSignerError | None = None
    for signer, verify in candidates:
        try:
            return verify(bundle), signer
        except WrongSignerError as exc:
            last = exc
    if last is not None:
        raise last
    raise WrongSignerError(f"signed with a {bundle.material.value} signer the policy does not list")


def verify_chain(
    deployed: Manifest,
    attestations: Mapping[str, str],
    policy: ChainPolicy,
    *,
    checker: ClaimChecker | None = None,
    artifacts: Mapping[str, Path] | None = None,
    deployed_path: Path | None = None,
    deployed_name: str = "",
    trusted_root: object | None = None,
    now: dt.datetime | None = None,
) -> ChainReport:
    """Verify ``attestations`` (source name -> bundle JSON) as a chain ending at
    ``deployed`` under ``policy``.

    ``artifacts`` maps manifest digests of intermediate artifacts to their paths; with
    them, ``checker`` re-derives every re-derivable claim. ``trusted_root`` is a
    sigstore ``TrustedRoot`` for keyless attestations.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    problems: list[ChainProblem] = []
    paths = dict(artifacts or {})
    if deployed_path is not None:
        paths[deployed.root_digest] = deployed_path
    if why := policy.time_problem(now):
        problems.append(ChainProblem("MSC012", why))

    verified = _verify_signatures(attestations, policy, trusted_root, problems)
    target = deployed.root_digest
    finals = _final_steps(verified, target)
    if not finals:
        problems.append(ChainProblem("MSC006", _edited_message(deployed, verified)))
        return ChainReport(
            target, deployed_name, policy.chain_id, (), (), tuple(problems), (), True, now
        )

    chain_id = _drop_replayed(verified, finals[0], policy, problems)
    walk = _ChainWalk(verified, policy, problems)
    walk.visit(finals[0])
    notes = [
        f"{source}: not on the path to the deployed artifact; ignored"
        for source in sorted(set(verified) - set(walk.order))
    ]
    steps = [
        _judge_step(source, *verified[source], policy, paths, checker, problems)
        for source in walk.order
    ]
    return ChainReport(
        target,
        deployed_name,
        chain_id,
        tuple(steps),
        tuple(dict.fromkeys(walk.roots)),
        tuple(problems),
        tuple(notes),
        True,
        now,
    )


_Verified = dict[str, tuple[VerifiedStep, PolicySigner]]


def _verify_signatures(
    attestations: Mapping[str, str],
    policy: ChainPolicy,
    trusted_root: object | None,
    problems: list[ChainProblem],
) -> _Verified:
    """Every attestation whose signature verifies under a policy signer, by source."""
    verified: _Verified = {}
    for source in sorted(attestations):
        try:
            bundle = parse_bundle(attestations[source], source)
        except UnsignedError as exc:
            problems.append(ChainProblem("MSC001", str(exc), source))
            continue
        except VerificationError as exc:
            problems.append(ChainProblem("MSC015", str(exc), source))
            continue
        try:
            payload, signer = _verify_with_policy(bundle, policy, trusted_root)
        except WrongSignerError as exc:
            problems.append(ChainProblem("MSC003", f"{source}: {exc}", source))
            continue
        except VerificationError as exc:
            problems.append(ChainProblem("MSC002", f"{source}: {exc}", source))
            continue
        try:
            step = parse_verified(payload.payload_type, payload.payload, payload.signer, source)
        except VerificationError as exc:
            problems.append(ChainProblem("MSC015", str(exc), source))
            continue
        verified[source] = (step, signer)
    return verified


def _final_steps(verified: _Verified, target: str) -> list[str]:
    """The steps whose output is ``target``, the last one first.

    Several steps may output the deployed digest (a step and its ``identical`` copy):
    the last is the one no other of them cites as its parent, whatever the clocks say.
    """
    finals = sorted(
        (s for s, (step, _) in verified.items() if step.statement.output.digest == target),
        key=lambda s: verified[s][0].statement.finished_at,
        reverse=True,
    )
    cited = {p for s in finals for p in verified[s][0].statement.parents}
    finals.sort(key=lambda s: verified[s][0].payload_digest in cited)
    return finals


def _drop_replayed(
    verified: _Verified, final: str, policy: ChainPolicy, problems: list[ChainProblem]
) -> str:
    """Remove the steps of other chains from ``verified``; returns the chain id."""
    final_step = verified[final][0].statement
    chain_id = policy.chain_id or final_step.chain_id
    if policy.chain_id and final_step.chain_id != policy.chain_id:
        problems.append(
            ChainProblem(
                "MSC009",
                f"{final}: last step belongs to chain {final_step.chain_id}, the "
                f"policy pins {policy.chain_id}",
                final,
            )
        )
    for source, (step, _) in list(verified.items()):
        if step.statement.chain_id != chain_id:
            problems.append(
                ChainProblem(
                    "MSC009",
                    f"{source}: '{step.statement.kind}' attestation belongs to chain "
                    f"{step.statement.chain_id}, not {chain_id} (replayed from another chain)",
                    source,
                )
            )
            del verified[source]
    return chain_id


class _ChainWalk:
    """Walk back from the deployed artifact to trusted roots; colours detect cycles."""

    def __init__(
        self, verified: _Verified, policy: ChainPolicy, problems: list[ChainProblem]
    ) -> None:
        self.verified = verified
        self.policy = policy
        self.problems = problems
        self.by_output: dict[str, list[str]] = {}
        for source, (step, _) in verified.items():
            self.by_output.setdefault(step.statement.output.digest, []).append(source)
        self.payloads = {step.payload_digest for step, _ in verified.values()}
        self.order: list[str] = []
        self.roots: list[str] = []
        self.state: dict[str, str] = {}

    def visit(self, source: str) -> None:
        if self.state.get(source) == "done":
            return
        if self.state.get(source) == "active":
            self.problems.append(
                ChainProblem(
                    "MSC008", f"{source}: attestations form a cycle through this step", source
                )
            )
            return
        self.state[source] = "active"
        step, signer = self.verified[source]
        st = step.statement
        if not st.inputs:
            if signer.name in self.policy.root_signers:
                self.roots.append(st.output.digest)
            else:
                self.problems.append(
                    ChainProblem(
                        "MSC007",
                        f"{source}: '{st.kind}' step has no inputs and its signer "
                        f"'{signer.name}' is not a trusted root signer",
                        source,
                    )
                )
        for ref in st.inputs:
            producers = [s for s in self.by_output.get(ref.digest, []) if s != source]
            if ref.digest in self.policy.root_digests:
                self.roots.append(ref.digest)
            elif producers:
                self.visit(producers[0])
            else:
                self.problems.append(
                    ChainProblem(
                        "MSC007",
                        f"{source}: input {ref.name or ''} {ref.digest} of the "
                        f"'{st.kind}' step is neither a trusted root nor the output of a verified "
                        "step (missing link)",
                        source,
                    )
                )
        for parent in st.parents:
            if parent not in self.payloads:
                self.problems.append(
                    ChainProblem(
                        "MSC014",
                        f"{source}: parent attestation {parent} is not among the "
                        "verified attestations",
                        source,
                    )
                )
        self.state[source] = "done"
        self.order.append(source)


def _judge_step(
    source: str,
    step: VerifiedStep,
    signer: PolicySigner,
    policy: ChainPolicy,
    paths: Mapping[str, Path],
    checker: ClaimChecker | None,
    problems: list[ChainProblem],
) -> ChainStep:
    """Policy checks and the claim re-check of one step on the path."""
    st = step.statement
    if st.kind not in policy.allowed_kinds:
        problems.append(
            ChainProblem(
                "MSC005", f"{source}: step kind '{st.kind}' is not allowed by the policy", source
            )
        )
    if not signer.may_sign(st.kind):
        problems.append(
            ChainProblem(
                "MSC004",
                f"{source}: signer '{signer.name}' ({step.signer.describe()}) is "
                f"not allowed to sign '{st.kind}' steps (allowed: {sorted(signer.kinds)})",
                source,
            )
        )
    if why := policy.time_problem(st.finished_at):
        problems.append(ChainProblem("MSC013", f"{source}: attestation time: {why}", source))
    result = _recheck(st, paths, checker)
    if result.status is CheckStatus.FAIL:
        problems.append(
            ChainProblem(
                "MSC010", f"{source}: '{st.kind}' claim does not hold: {result.detail}", source
            )
        )
    elif result.status is CheckStatus.UNCHECKABLE or (
        result.status is CheckStatus.NO_ARTIFACTS and policy.require_recheck
    ):
        problems.append(
            ChainProblem(
                "MSC011",
                f"{source}: '{st.kind}' claim could not be re-checked: {result.detail}",
                source,
            )
        )
    return ChainStep(source, step, signer.name, result)


def _recheck(
    st: StepStatement, paths: Mapping[str, Path], checker: ClaimChecker | None
) -> CheckResult:
    if not st.rederivable:
        return CheckResult(CheckStatus.DECLARED_ONLY, f"'{st.kind}' cannot be re-derived")
    if st.kind == "identical":
        # Needs no artifact: the claim is that the digests are equal.
        same = all(i.digest == st.output.digest for i in st.inputs)
        return CheckResult(
            CheckStatus.PASS if same else CheckStatus.FAIL,
            "input and output digests are equal"
            if same
            else "output digest differs from the input digest",
        )
    if checker is None:
        return CheckResult(CheckStatus.NO_ARTIFACTS, "no claim checker supplied")
    in_path = paths.get(st.inputs[0].digest) if st.inputs else None
    return checker(st, in_path, paths.get(st.output.digest))


def _edited_message(deployed: Manifest, verified: Mapping[str, tuple[VerifiedStep, object]]) -> str:
    base = f"deployed artifact {deployed.root_digest} is not the output of any verified attestation"
    # An ``identical`` step's input is its own output digest: it does not consume it.
    consumed = {
        i.digest
        for s, _ in verified.values()
        for i in s.statement.inputs
        if i.digest != s.statement.output.digest
    }
    finals = [s for s, _ in verified.values() if s.statement.output.digest not in consumed]
    if not finals:
        return base
    last = max(finals, key=lambda s: s.statement.finished_at)
    want = dict(last.statement.output.files)
    have = {f.path: f.sha256 for f in deployed.files}
    diffs = []
    for name in sorted(set(want) | set(have)):
        if name not in have:
            diffs.append(Discrepancy("missing", name, want[name]))
        elif name not in want:
            diffs.append(Discrepancy("added", name, actual=have[name]))
        elif want[name] != have[name]:
            diffs.append(Discrepancy("modified", name, want[name], have[name]))
    detail = "; ".join(d.describe() for d in diffs) or "tensor digests differ"
    return f"{base}: it was changed after the last attestation ('{last.statement.kind}'): {detail}"
