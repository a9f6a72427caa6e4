"""Transformation attestations: signed claims that one artifact was derived from others.

A step attestation is an in-toto Statement v1 in a DSSE envelope inside a Sigstore
bundle (the same container as model signatures). Its subject is the output's manifest
digest plus each output file's sha256; its predicate (type
:data:`STEP_PREDICATE_TYPE`) records the step kind and parameters, the inputs by
manifest digest, the parent attestations, the tool, the times and a chain identifier.
docs/attestations.md documents the schema.

A signature only says who made a claim, not that it is true, so before signing a
re-derivable claim (identical, cast, quantize, prune, convert, merge, lora) the caller's
checker must confirm it; kinds that cannot be re-derived (train, fine-tune, ...) are signed as
*declared-only* and the chain policy decides whether to accept them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from signing.bundle import parse_bundle
from signing.dsse import IN_TOTO_PAYLOAD_TYPE
from signing.errors import SigningError, VerificationError
from signing.manifest import Manifest
from signing.oms import IN_TOTO_STATEMENT_TYPE
from signing.signers import Signer
from signing.verifiers import SignerIdentity, Verifier

STEP_PREDICATE_TYPE = "https://modelseal.dev/attestation/step/v1"
REDERIVABLE_KINDS = frozenset(
    {"identical", "cast", "quantize", "gguf", "requantize", "prune", "convert", "merge", "lora"}
)
"""Kinds whose claim can be recomputed from input and output artifacts."""
_SUBJECT_ROLE = "modelseal.dev/role"


class ClaimRefusedError(SigningError):
    """The claim to be attested does not hold (or could not be checked); nothing signed."""

    exit_code = 1


class CheckStatus(str, Enum):
    """Outcome of re-checking a claim."""

    PASS = "pass"
    FAIL = "fail"
    UNCHECKABLE = "could-not-recheck"
    """A checker exists for the kind but could not run (missing capability): fail closed."""
    NO_ARTIFACTS = "no-artifacts"
    """The input or output artifact was not supplied, so nothing could be recomputed."""
    DECLARED_ONLY = "declared-only"
    """The kind cannot be re-derived (train, fine-tune): only the signature vouches for it."""


@dataclass(frozen=True)
class CheckResult:
    """What a claim checker found; ``detail`` is one line for reports."""

    status: CheckStatus
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True only for a claim that was recomputed and holds."""
        return self.status is CheckStatus.PASS


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact named by its manifest root digest (``sha256:<hex>``)."""

    digest: str
    name: str = ""
    files: tuple[tuple[str, str], ...] = ()
    """(path, hex sha256) of each file; recorded for outputs only."""

    @classmethod
    def of(cls, manifest: Manifest, name: str = "", with_files: bool = False) -> ArtifactRef:
        """Reference ``manifest``; ``with_files`` also records per-file digests."""
        files = tuple((f.path, f.sha256) for f in manifest.files) if with_files else ()
        return cls(manifest.root_digest, name, files)


@dataclass(frozen=True)
class StepStatement:
    """The content of one step attestation (see docs/attestations.md)."""

    kind: str
    output: ArtifactRef
    inputs: tuple[ArtifactRef, ...]
    chain_id: str
    started_at: dt.datetime
    finished_at: dt.datetime
    parameters: Mapping[str, str] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    """``sha256:<hex>`` of each parent attestation's signed payload."""
    claim: CheckStatus = CheckStatus.PASS
    """How the claim stood when signed: ``pass`` (re-checked) or ``declared-only``."""
    claim_detail: str = ""
    tool_name: str = "modelseal"
    tool_version: str = ""

    @property
    def rederivable(self) -> bool:
        """Whether the kind's claim can be recomputed from artifacts."""
        return self.kind in REDERIVABLE_KINDS

    def to_statement(self) -> dict[str, Any]:
        """The in-toto Statement v1 as a JSON-ready dict."""
        subject = [
            {
                "name": self.output.name or "output",
                "digest": {"sha256": _hex(self.output.digest)},
                "annotations": {_SUBJECT_ROLE: "manifest"},
            }
        ]
        subject += [
            {"name": path, "digest": {"sha256": sha}, "annotations": {_SUBJECT_ROLE: "file"}}
            for path, sha in self.output.files
        ]
        return {
            "_type": IN_TOTO_STATEMENT_TYPE,
            "subject": subject,
            "predicateType": STEP_PREDICATE_TYPE,
            "predicate": {
                "step": {
                    "kind": self.kind,
                    "parameters": dict(sorted(self.parameters.items())),
                    "claim": self.claim.value,
                    "claimDetail": self.claim_detail,
                },
                "inputs": [{"name": i.name, "digest": i.digest} for i in self.inputs],
                "parentAttestations": list(self.parents),
                "tool": {"name": self.tool_name, "version": self.tool_version},
                "startedAt": _iso(self.started_at),
                "finishedAt": _iso(self.finished_at),
                "chain": self.chain_id,
            },
        }

    def to_payload(self) -> bytes:
        """Canonical statement bytes (sorted keys) to sign."""
        return json.dumps(self.to_statement(), indent=2, sort_keys=True).encode()

    @classmethod
    def from_statement(cls, data: Mapping[str, Any], source: str = "attestation") -> StepStatement:
        """Parse a step statement; anything malformed raises VerificationError."""
        if data.get("_type") != IN_TOTO_STATEMENT_TYPE:
            raise VerificationError(f"{source} is not an in-toto Statement v1")
        if data.get("predicateType") != STEP_PREDICATE_TYPE:
            raise VerificationError(
                f"{source} has predicateType {data.get('predicateType')!r}, expected "
                f"{STEP_PREDICATE_TYPE!r}"
            )
        try:
            subjects = list(data["subject"])
            head = subjects[0]
            if head.get("annotations", {}).get(_SUBJECT_ROLE) != "manifest":
                raise VerificationError(f"{source}: first subject is not the output manifest")
            files = tuple(
                (str(s["name"]), str(s["digest"]["sha256"]))
                for s in subjects[1:]
                if s.get("annotations", {}).get(_SUBJECT_ROLE) == "file"
            )
            output = ArtifactRef(
                "sha256:" + str(head["digest"]["sha256"]), str(head.get("name", "")), files
            )
            pred = data["predicate"]
            step = pred["step"]
            return cls(
                kind=str(step["kind"]),
                parameters={str(k): str(v) for k, v in dict(step.get("parameters", {})).items()},
                claim=CheckStatus(step.get("claim", "pass")),
                claim_detail=str(step.get("claimDetail", "")),
                output=output,
                inputs=tuple(
                    ArtifactRef(str(i["digest"]), str(i.get("name", ""))) for i in pred["inputs"]
                ),
                parents=tuple(str(p) for p in pred.get("parentAttestations", ())),
                tool_name=str(pred["tool"]["name"]),
                tool_version=str(pred["tool"].get("version", "")),
                started_at=_parse_time(pred["startedAt"]),
                finished_at=_parse_time(pred["finishedAt"]),
                chain_id=str(pred["chain"]),
            )
        except VerificationError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise VerificationError(f"{source} step statement is malformed: {exc!r}") from None


ClaimChecker = Callable[[StepStatement, "Path | None", "Path | None"], CheckResult]
"""Re-derives a step's claim from (statement, input path, output path); the scanner
supplies one. ``signing`` never imports the scanner."""


@dataclass(frozen=True)
class Attestation:
    """A signed step: the bundle JSON and the statement it carries."""

    bundle: str
    statement: StepStatement

    @property
    def payload_digest(self) -> str:
        """``sha256:<hex>`` of the signed payload; children cite it as a parent."""
        return payload_digest(self.statement.to_payload())


def payload_digest(payload: bytes) -> str:
    """``sha256:<hex>`` of signed statement bytes."""
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def _hex(digest: str) -> str:
    algo, _, value = digest.partition(":")
    if algo != "sha256" or len(value) != 64:
        raise SigningError(f"manifest digest {digest!r} is not sha256:<64 hex>")
    return value


def _iso(when: dt.datetime) -> str:
    if when.tzinfo is None:
        raise SigningError("attestation times must be timezone-aware")
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any) -> dt.datetime:
    when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return when


def new_chain_id() -> str:
    """A fresh random chain identifier."""
    return f"urn:uuid:{uuid.uuid4()}"


def attest_step(
    kind: str,
    inputs: Iterable[tuple[Manifest, str]],
    output: tuple[Manifest, str],
    signer: Signer,
    *,
    checker: ClaimChecker | None,
    input_path: Path | None = None,
    output_path: Path | None = None,
    parameters: Mapping[str, str] | None = None,
    parents: Iterable[Attestation] = (),
    chain_id: str | None = None,
    declared_only: bool = False,
    tool_version: str = "",
    started_at: dt.datetime | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
) -> Attestation:
    """Re-check the claim, then sign a step statement.

    Re-derivable kinds are signed only if ``checker`` returns PASS; ``declared_only``
    lets the caller sign a re-derivable kind that the checker could not recompute
    (recorded as declared-only, never as re-checked). Non-re-derivable kinds are always
    declared-only. The chain id is inherited from the parents (they must agree) or
    given, or new.
    """
    start = started_at or clock()
    parents = tuple(parents)
    chains = {p.statement.chain_id for p in parents}
    if len(chains) > 1:
        raise SigningError(f"parent attestations belong to different chains: {sorted(chains)}")
    if chains:
        inherited = next(iter(chains))
        if chain_id and chain_id != inherited:
            raise SigningError(f"chain id {chain_id} differs from the parents' {inherited}")
        chain_id = inherited
    in_refs = tuple(ArtifactRef.of(m, name) for m, name in inputs)
    if not in_refs and kind in REDERIVABLE_KINDS:
        raise SigningError(f"a '{kind}' step needs at least one --input")
    draft = StepStatement(
        kind=kind,
        output=ArtifactRef.of(output[0], output[1], with_files=True),
        inputs=in_refs,
        chain_id=chain_id or new_chain_id(),
        started_at=start,
        finished_at=start,
        parameters=dict(parameters or {}),
        parents=tuple(p.payload_digest for p in parents),
        tool_version=tool_version,
    )
    if kind in REDERIVABLE_KINDS:
        if checker is None:
            result = CheckResult(CheckStatus.UNCHECKABLE, "no claim checker supplied")
        else:
            result = checker(draft, input_path, output_path)
        if result.status is not CheckStatus.PASS:
            if not (
                declared_only
                and result.status in (CheckStatus.UNCHECKABLE, CheckStatus.NO_ARTIFACTS)
            ):
                raise ClaimRefusedError(
                    f"refusing to attest '{kind}': claim {result.status.value}"
                    f"{': ' + result.detail if result.detail else ''}"
                    + (
                        ""
                        if result.status is CheckStatus.FAIL
                        else " (pass --declared-only to sign it as an unchecked declaration)"
                    )
                )
            claim, detail = CheckStatus.DECLARED_ONLY, f"not re-checked: {result.detail}"
        else:
            claim, detail = CheckStatus.PASS, result.detail
    else:
        claim, detail = CheckStatus.DECLARED_ONLY, f"'{kind}' cannot be re-derived"
    statement = replace(draft, claim=claim, claim_detail=detail, finished_at=clock())
    return Attestation(signer.sign(statement.to_payload(), IN_TOTO_PAYLOAD_TYPE), statement)


@dataclass(frozen=True)
class VerifiedStep:
    """An attestation whose signature verified."""

    statement: StepStatement
    signer: SignerIdentity
    payload_digest: str


def read_attestation(
    bundle_text: str, verifier: Verifier, source: str = "attestation"
) -> VerifiedStep:
    """Verify an attestation bundle's signature and parse its step statement."""
    verified = verifier.verify(parse_bundle(bundle_text, source))
    return parse_verified(verified.payload_type, verified.payload, verified.signer, source)


def parse_verified(
    payload_type: str, payload: bytes, signer: SignerIdentity, source: str
) -> VerifiedStep:
    """Parse the verified payload of an attestation."""
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise VerificationError(f"{source} signs a {payload_type!r} payload, not in-toto")
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{source} payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise VerificationError(f"{source} payload is not a JSON object")
    return VerifiedStep(StepStatement.from_statement(data, source), signer, payload_digest(payload))
