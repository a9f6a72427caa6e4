"""`modelseal lifecycle check` on the shipped examples, with and without attestations."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from scanner.cli.main import main
from scanner.lifecycle import LifecycleError, check_lifecycle, load_lifecycle, parse_lifecycle
from scanner.lifecycle.coverage import StepAttestation
from signing.attest import STEP_PREDICATE_TYPE, CheckResult, CheckStatus, attest_step
from signing.keys import KeyType, generate_private_key, load_private_key, write_key_pair
from signing.manifest import FileDigest, Manifest
from signing.signers import KeySigner

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lifecycles"
T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


def _manifest(name: str) -> Manifest:
    data = name.encode()
    return Manifest(
        name, files=(FileDigest("model.bin", len(data), hashlib.sha256(data).hexdigest()),)
    )


def _passing(_st, _i, _o) -> CheckResult:
    return CheckResult(CheckStatus.PASS, "re-derived")


def _keys(tmp_path: Path) -> tuple[KeySigner, Path]:
    priv, pub = tmp_path / "ci.pem", tmp_path / "ci.pub.pem"
    write_key_pair(generate_private_key(KeyType.ECDSA_P256), priv, pub)
    return KeySigner(load_private_key(priv)), pub


def _attest_all(lifecycle_path: Path, folder: Path, signer: KeySigner) -> list[str]:
    """One signed step attestation per step that requires one (fresh EC key)."""
    folder.mkdir()
    written = []
    parent = None
    for i, step in enumerate(load_lifecycle(lifecycle_path).steps):
        if not step.attestation:
            continue
        kind = "convert" if step.kind == "export" else step.kind
        att = attest_step(
            kind,
            [(_manifest(x), x) for x in step.inputs],
            (_manifest(step.outputs[0]), step.outputs[0]),
            signer,
            checker=_passing,
            parents=[parent] if parent else [],
            chain_id=None if parent else "urn:chain:t",
            started_at=T0,
            clock=lambda: T0,
            tool_version="0.1.0",
        )
        parent = att
        path = folder / f"{i}-{step.name}.json"
        path.write_text(att.bundle, encoding="utf-8")
        written.append(path.name)
    return written


@pytest.mark.parametrize("example", ["llm.toml", "vision.toml"])
def test_examples_without_and_with_attestations(example: str, tmp_path: Path, capsys) -> None:
    path = EXAMPLES / example
    lifecycle = load_lifecycle(path)
    bare = check_lifecycle(lifecycle)
    assert bare.counts()["open"] > 0
    signer, pub = _keys(tmp_path)
    written = _attest_all(path, tmp_path / "att", signer)
    assert written
    json_out = tmp_path / "cov.json"
    assert (
        main(
            [
                "lifecycle",
                "check",
                str(path),
                "--attestations",
                str(tmp_path / "att"),
                "--public-key",
                str(pub),
                "--format",
                "json",
                "-o",
                str(json_out),
            ]
        )
        == 0
    )
    data = json.loads(json_out.read_text())
    assert data["coverage"] > bare.coverage
    assert data["counts"]["open"] < bare.counts()["open"]
    steps = {s["name"]: s for s in data["steps"]}
    for step in lifecycle.steps:
        if step.attestation:
            assert "signature" in steps[step.name]["evidence"], step.name
    # Re-derivable steps gain claim evidence from a `claim: pass` attestation.
    assert "claim" in steps["quantize"]["evidence"]
    assert not data["unmatched_attestations"]
    # Text output names steps, threats and recommendations.
    assert main(["lifecycle", "check", str(path)]) == 0
    text = capsys.readouterr().out
    assert "T1.1" in text and "coverage:" in text and "->" in text


def test_third_party_step_needs_its_signature(tmp_path: Path) -> None:
    lifecycle = load_lifecycle(EXAMPLES / "llm.toml")
    bare = check_lifecycle(lifecycle)
    tune = next(s for s in bare.steps if s.step.name == "fine-tune")
    statuses = {t.threat.id: t.status for t in tune.threats}
    assert statuses["T6.2"] == "open"
    att = StepAttestation("x.json", "fine-tune", "tuned", "declared-only", "ci")
    after = check_lifecycle(lifecycle, [att])
    tune = next(s for s in after.steps if s.step.name == "fine-tune")
    statuses = {t.threat.id: t.status for t in tune.threats}
    assert statuses["T6.2"] == "covered"
    # A declared-only fine-tune never counts as a re-derived claim.
    assert "claim" not in tune.evidence


def test_wrong_key_is_rejected_not_counted(tmp_path: Path, capsys) -> None:
    path = EXAMPLES / "vision.toml"
    signer, _pub = _keys(tmp_path)
    _attest_all(path, tmp_path / "att", signer)
    other = tmp_path / "other"
    other.mkdir()
    _s, other_pub = _keys(other)
    assert (
        main(
            [
                "lifecycle",
                "check",
                str(path),
                "--attestations",
                str(tmp_path / "att"),
                "--public-key",
                str(other_pub),
                "--fail-under",
                "99",
            ]
        )
        == 1
    )
    text = capsys.readouterr().out
    assert "rejected" in text
    assert "attestation required, none verified" in text
    assert STEP_PREDICATE_TYPE.endswith("/step/v1")


def test_invalid_lifecycles(tmp_path: Path) -> None:
    with pytest.raises(LifecycleError, match="kind must be one of"):
        parse_lifecycle({"step": [{"name": "x", "kind": "teleport"}]})
    with pytest.raises(LifecycleError, match="unknown key"):
        parse_lifecycle({"step": [{"kind": "train", "atestation": True}]})
    with pytest.raises(LifecycleError, match="unknown check"):
        parse_lifecycle({"step": [{"kind": "train", "checks": ["vibes"]}]})
    with pytest.raises(LifecycleError, match="at least one"):
        parse_lifecycle({"lifecycle": {"name": "x"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[[step]\n")
    assert main(["lifecycle", "check", str(bad)]) == 2
    note = check_lifecycle(parse_lifecycle({"step": [{"kind": "fine-tune", "checks": ["claim"]}]}))
    assert note.steps[0].notes and "claim" not in note.steps[0].evidence
