"""Step attestations and chain verification: one good chain and every rejection."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from signing.attest import (
    STEP_PREDICATE_TYPE,
    CheckResult,
    CheckStatus,
    ClaimRefusedError,
    StepStatement,
    attest_step,
    read_attestation,
)
from signing.chain import RULES, verify_chain
from signing.chain_output import FORMATTERS, ChainOutputFormat, render
from signing.chain_policy import PolicyError, parse_policy
from signing.keys import KeyType, load_private_key, load_public_key
from signing.manifest import FileDigest, Manifest
from signing.signers import KeySigner
from signing.verifiers import PublicKeyVerifier


def file_manifest(path: Path) -> Manifest:
    """File-only manifest of a folder (the scanner would add tensors; not needed here)."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return Manifest(
        "files",
        files=tuple(
            FileDigest(
                p.relative_to(path).as_posix(),
                p.stat().st_size,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
            for p in files
        ),
    )


T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


def passing(_st: StepStatement, _i: Path | None, _o: Path | None) -> CheckResult:
    return CheckResult(CheckStatus.PASS, "re-derived")


class Setup:
    """root --cast--> mid --quantize--> deployed, signed by 'ci'; 'trainer' may fine-tune."""

    def __init__(self, tmp: Path, key_files) -> None:
        self.tmp = tmp
        ci_priv, ci_pub = key_files(KeyType.ECDSA_P256)
        tr_priv, tr_pub = key_files(KeyType.ED25519)
        self.ci = KeySigner(load_private_key(ci_priv))
        self.trainer = KeySigner(load_private_key(tr_priv))
        self.ci_pub = ci_pub
        self.arts = {}
        for name, data in (
            ("root", b"fp32" * 1000),
            ("mid", b"fp16" * 500),
            ("deployed", b"int8" * 250),
        ):
            d = tmp / name
            d.mkdir()
            (d / "model.bin").write_bytes(data)
            (d / "config.json").write_text('{"arch": "x"}')
            self.arts[name] = d
        self.root_m = file_manifest(self.arts["root"])
        self.policy_data = {
            "allowed_kinds": ["cast", "quantize", "fine-tune"],
            "roots": {"digests": [self.root_m.root_digest]},
            "signers": [
                {"name": "ci", "public_key": str(ci_pub), "kinds": ["cast", "quantize"]},
                {"name": "trainer", "public_key": str(tr_pub), "kinds": ["fine-tune"]},
            ],
        }
        self.cast = self.step("cast", "root", "mid", self.ci)
        self.quant = self.step(
            "quantize",
            "mid",
            "deployed",
            self.ci,
            parents=[self.cast],
            params={"bits": "8", "scheme": "rtn"},
        )

    def step(self, kind, src, dst, signer, parents=(), params=None, chain_id=None, checker=passing):
        return attest_step(
            kind,
            [(file_manifest(self.arts[src]), src)],
            (file_manifest(self.arts[dst]), dst),
            signer,
            checker=checker,
            parameters=params or {},
            parents=parents,
            chain_id=chain_id or (None if parents else "urn:chain:test"),
            started_at=T0,
            clock=lambda: T0 + dt.timedelta(minutes=1),
            tool_version="0.1.0",
        )

    def policy(self, **overrides):
        return parse_policy({**self.policy_data, **overrides}, self.tmp)

    def verify(self, files=None, policy=None, checker=passing, now=T0 + dt.timedelta(days=1)):
        files = (
            files
            if files is not None
            else {"1-cast.json": self.cast.bundle, "2-quantize.json": self.quant.bundle}
        )
        return verify_chain(
            file_manifest(self.arts["deployed"]),
            files,
            policy or self.policy(),
            checker=checker,
            artifacts={},
            deployed_path=self.arts["deployed"],
            deployed_name="deployed",
            now=now,
        )


@pytest.fixture
def chain(tmp_path, key_files) -> Setup:
    return Setup(tmp_path, key_files)


def _rules(report) -> set[str]:
    return {p.rule for p in report.problems}


def test_good_chain_verifies(chain: Setup) -> None:
    report = chain.verify()
    assert report.passed, report.problems
    assert report.exit_code == 0
    assert [s.step.statement.kind for s in report.steps] == ["cast", "quantize"]
    assert report.roots == (chain.root_m.root_digest,)
    text = render(report, ChainOutputFormat.TEXT)
    assert text.startswith("PASS: chain urn:chain:test")
    assert "<- quantize" in text and "<- cast" in text and "[trusted root]" in text
    data = json.loads(render(report, ChainOutputFormat.JSON))
    assert data["passed"] is True and len(data["steps"]) == 2
    sarif = json.loads(render(report, ChainOutputFormat.SARIF))
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is True
    assert sarif["runs"][0]["results"] == []


def test_every_output_format_is_handled() -> None:
    assert set(FORMATTERS) == set(ChainOutputFormat)


def test_statement_schema(chain: Setup) -> None:
    verifier = PublicKeyVerifier(load_public_key(chain.ci_pub))
    verified = read_attestation(chain.quant.bundle, verifier)
    st = verified.statement
    assert st.parameters == {"bits": "8", "scheme": "rtn"}
    assert st.parents == (chain.cast.payload_digest,)
    assert st.chain_id == "urn:chain:test"
    assert st.output.digest == file_manifest(chain.arts["deployed"]).root_digest
    assert {p for p, _ in st.output.files} == {"model.bin", "config.json"}
    envelope = json.loads(chain.quant.bundle)["dsseEnvelope"]
    payload = json.loads(base64.b64decode(envelope["payload"]))
    assert payload["predicateType"] == STEP_PREDICATE_TYPE
    assert payload["predicate"]["tool"] == {"name": "modelseal", "version": "0.1.0"}


def test_unsigned_step_rejected(chain: Setup) -> None:
    bare = base64.b64decode(json.loads(chain.quant.bundle)["dsseEnvelope"]["payload"]).decode()
    report = chain.verify({"1-cast.json": chain.cast.bundle, "2-quantize.json": bare})
    assert "MSC001" in _rules(report)
    msg = next(p.message for p in report.problems if p.rule == "MSC001")
    assert "2-quantize.json" in msg and "unsigned" in msg
    assert report.exit_code == 1


def test_forged_statement_under_old_signature_rejected(chain: Setup) -> None:
    data = json.loads(chain.quant.bundle)
    payload = base64.b64decode(data["dsseEnvelope"]["payload"]).replace(b'"rtn"', b'"gptq"')
    data["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    report = chain.verify({"1-cast.json": chain.cast.bundle, "2-quantize.json": json.dumps(data)})
    problem = next(p for p in report.problems if p.rule == "MSC002")
    assert "2-quantize.json" in problem.message and "altered after signing" in problem.message


def test_missing_link_rejected(chain: Setup) -> None:
    report = chain.verify({"2-quantize.json": chain.quant.bundle})
    problem = next(p for p in report.problems if p.rule == "MSC007")
    mid = file_manifest(chain.arts["mid"]).root_digest
    assert mid in problem.message and "missing link" in problem.message
    assert "MSC014" in _rules(report)  # the cited parent attestation is absent too


def test_step_signed_by_key_not_allowed_for_kind(chain: Setup) -> None:
    rogue_cast = chain.step("cast", "root", "mid", chain.trainer)
    report = chain.verify({"1-cast.json": rogue_cast.bundle, "2-quantize.json": chain.quant.bundle})
    problem = next(p for p in report.problems if p.rule == "MSC004")
    assert "signer 'trainer'" in problem.message and "'cast'" in problem.message


def test_unknown_signer_rejected(chain: Setup, key_files) -> None:
    stranger = KeySigner(load_private_key(key_files(KeyType.ECDSA_P384)[0]))
    report = chain.verify(
        {
            "1-cast.json": chain.step("cast", "root", "mid", stranger).bundle,
            "2-quantize.json": chain.quant.bundle,
        }
    )
    assert "MSC003" in _rules(report)


def test_replayed_attestation_from_another_chain(chain: Setup) -> None:
    replayed = chain.step("cast", "root", "mid", chain.ci, chain_id="urn:chain:other")
    report = chain.verify({"1-cast.json": replayed.bundle, "2-quantize.json": chain.quant.bundle})
    problem = next(p for p in report.problems if p.rule == "MSC009")
    assert "urn:chain:other" in problem.message and "replayed" in problem.message


def test_deployed_edited_after_last_attestation(chain: Setup) -> None:
    (chain.arts["deployed"] / "model.bin").write_bytes(b"backdoored")
    report = chain.verify()
    problem = next(p for p in report.problems if p.rule == "MSC006")
    assert "changed after the last attestation ('quantize')" in problem.message
    assert "file 'model.bin' modified" in problem.message


def test_valid_signature_but_claim_recheck_fails(chain: Setup) -> None:
    def checker(st: StepStatement, _i, _o) -> CheckResult:
        if st.kind == "quantize":
            return CheckResult(CheckStatus.FAIL, "37 int8 codes differ from round-to-nearest")
        return CheckResult(CheckStatus.PASS)

    report = chain.verify(checker=checker)
    problem = next(p for p in report.problems if p.rule == "MSC010")
    assert "2-quantize.json" in problem.message and "37 int8 codes" in problem.message


def test_uncheckable_claim_fails_closed(chain: Setup) -> None:
    report = chain.verify(checker=lambda st, i, o: CheckResult(CheckStatus.UNCHECKABLE, "n/a"))
    assert "MSC011" in _rules(report)


@pytest.mark.parametrize(
    ("window", "match"),
    [
        ({"not_after": "2025-06-01T00:00:00Z"}, "policy expired"),
        ({"not_before": "2025-07-01T00:00:00Z"}, "not yet valid"),
    ],
)
def test_policy_validity_window(chain: Setup, window, match) -> None:
    report = chain.verify(policy=chain.policy(**window))
    problem = next(p for p in report.problems if p.rule == "MSC012")
    assert match in problem.message


def test_attestation_refuses_a_failing_claim(chain: Setup) -> None:
    with pytest.raises(ClaimRefusedError, match="claim fail: codes differ"):
        chain.step(
            "quantize",
            "mid",
            "deployed",
            chain.ci,
            checker=lambda *_: CheckResult(CheckStatus.FAIL, "codes differ"),
        )


def test_uncheckable_claim_needs_declared_only(chain: Setup) -> None:
    uncheckable = lambda *_: CheckResult(CheckStatus.UNCHECKABLE, "no checker")  # noqa: E731
    with pytest.raises(ClaimRefusedError, match="--declared-only"):
        chain.step("prune", "mid", "deployed", chain.ci, checker=uncheckable)
    att = attest_step(
        "prune",
        [(file_manifest(chain.arts["mid"]), "mid")],
        (file_manifest(chain.arts["deployed"]), "deployed"),
        chain.ci,
        checker=uncheckable,
        declared_only=True,
    )
    assert att.statement.claim is CheckStatus.DECLARED_ONLY


def test_non_rederivable_kind_is_declared_only(chain: Setup) -> None:
    att = chain.step(
        "fine-tune",
        "root",
        "mid",
        chain.trainer,
        checker=lambda *_: pytest.fail("train claims are not re-checked"),
    )
    assert att.statement.claim is CheckStatus.DECLARED_ONLY


def test_policy_rejects_unknown_keys_and_empty_roots(chain: Setup) -> None:
    with pytest.raises(PolicyError, match="unknown keys"):
        chain.policy(alowed_kinds=["cast"])
    with pytest.raises(PolicyError, match="trusts no root"):
        chain.policy(roots={})


def test_every_rule_has_a_description() -> None:
    assert all(RULES.values()) and len(RULES) == len(set(RULES))
