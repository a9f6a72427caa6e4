"""``modelseal gate`` end to end on a real model (MiniLM, BERT F32 safetensors): a
signature over the deployed folder and a two-step attestation chain
(trusted --fine-tune--> staging --fine-tune--> deployed), both steps declared.

The fine-tune is simulated by small dense noise on every tensor. Its classification
comes from a stand-in analyzer that labels dense small changes "full fine-tune" (the
weight-analysis classifier's class name), so this test pins the gate's plumbing; it is
to be switched to the default analyzers once that classifier lands.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures import real_model
from fixtures.real_models import SILERO_ST
from scanner.checks.pair import default_analyzers
from scanner.cli.main import main
from scanner.diff.engine import Analysis, Analyzer, PairContext
from scanner.diff.model import TensorStatus
from scanner.gate import GateRequest, run_gate
from scanner.manifest import build_manifest
from scanner.policy import load_pack
from signing.keys import KeyType, generate_private_key, load_public_key, write_key_pair
from signing.verifiers import PublicKeyVerifier


def _standin_classifier(ctx: PairContext) -> Analysis:
    dense = [
        t
        for t in ctx.tensors
        if t.status is TensorStatus.CHANGED
        and t.delta is not None
        and t.delta.fraction_changed > 0.5
        and t.delta.rel_l2 < 0.05
    ]
    return Analysis(
        labels={t.name: {"class": "full fine-tune"} for t in dense},
        explained={t.name: "full fine-tune" for t in dense},
        classification="full fine-tune" if dense else None,
    )


def _analyzers():
    base = default_analyzers()
    return [*base[:-1], Analyzer("standin-finetune", _standin_classifier), base[-1]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("gate-e2e")
    src = real_model(SILERO_ST)  # small and real: the whole pipeline in seconds
    trusted, staging, deployed = tmp / "trusted", tmp / "staging", tmp / "deployed"
    for folder in (trusted, staging, deployed):
        folder.mkdir()
    shutil.copy(src, trusted / "model.safetensors")
    rng = np.random.default_rng(11)

    def tune(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            k: (v + (5e-4 * np.abs(v).mean() * rng.standard_normal(v.shape)).astype(v.dtype))
            if v.dtype == np.float32
            else v
            for k, v in tensors.items()
        }

    first = tune(load_file(str(src)))
    save_file(first, str(staging / "model.safetensors"))
    save_file(tune(first), str(deployed / "model.safetensors"))
    priv, pub = tmp / "k.pem", tmp / "k.pub.pem"
    write_key_pair(generate_private_key(KeyType.ECDSA_P256), priv, pub)
    sig = tmp / "model.sig"
    assert main(["sign", str(deployed), "--key", str(priv), "-o", str(sig)]) == 0
    atts = tmp / "atts"
    atts.mkdir()
    assert (
        main(
            [
                "attest",
                "fine-tune",
                "--input",
                str(trusted),
                "--produced",
                str(staging),
                "--key",
                str(priv),
                "-o",
                str(atts / "1-copy.json"),
                "--chain",
                "urn:e2e",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "attest",
                "fine-tune",
                "--input",
                str(staging),
                "--produced",
                str(deployed),
                "--parent",
                str(atts / "1-copy.json"),
                "--key",
                str(priv),
                "-o",
                str(atts / "2-tune.json"),
            ]
        )
        == 0
    )
    policy = tmp / "chain.toml"
    policy.write_text(
        'allowed_kinds = ["fine-tune"]\n'
        f'[roots]\ndigests = ["{build_manifest(trusted).root_digest}"]\n'
        f'[[signers]]\nname = "ml"\npublic_key = "{pub}"\nkinds = ["fine-tune"]\n'
    )
    allow = tmp / "ours.toml"
    allow.write_text(
        '[pack]\nname = "ours"\nextends = "default"\n'
        '[[tensors]]\npattern = "*"\n'
        'allow = ["identical", "full fine-tune", "rounding noise"]\n'
    )
    return {
        "trusted": trusted,
        "staging": staging,
        "deployed": deployed,
        "sig": sig,
        "pub": pub,
        "atts": atts,
        "policy": policy,
        "allow": allow,
        "tmp": tmp,
    }


def _request(s: dict[str, Path], pack: str | Path) -> GateRequest:
    return GateRequest(
        deployed=s["deployed"],
        pack=load_pack(pack),
        trusted=s["trusted"],
        signature=s["sig"],
        verifier=PublicKeyVerifier(load_public_key(s["pub"])),
        attestations=s["atts"],
        chain_policy=s["policy"],
        artifacts=(s["staging"],),
    )


def test_finetune_passes_an_allowing_pack_and_fails_strict(setup: dict[str, Path]) -> None:
    ours = run_gate(_request(setup, setup["allow"]), analyzers=_analyzers())
    assert ours.verdict == "pass", [f.message for f in ours.failing()]
    gate = ours.evidence["gate"]
    assert gate["signature"]["verified"] is True
    assert gate["chain"]["passed"] is True and len(gate["chain"]["steps"]) == 2
    assert gate["steps"] == ["signature", "attestation chain", "diff", "scan"]
    assert gate["attested"] is False  # the fine-tune is declared, not re-derived
    strict = run_gate(_request(setup, "strict"), analyzers=_analyzers())
    assert strict.verdict == "fail"
    # the fine-tune itself: a class no claim, --allow or pack accepts (MS308; MS805 for a
    # classified tensor no finding reports)
    assert {"MS308", "MS805"} & {f.rule_id for f in strict.failing()}


def test_signed_finetune_chain_is_accepted_by_default_not_without_it(
    setup: dict[str, Path],
) -> None:
    """Default pack: a fine-tune passes when a verified chain of signed fine-tune steps
    from the trusted artifact vouches for it, and fails (MS308) without the chain."""
    signed = run_gate(_request(setup, "default"), analyzers=_analyzers())
    assert signed.evidence["gate"]["signed_classes"] == [
        "full fine-tune",
        "low-rank update",
        "rounding noise",
    ]
    assert signed.verdict == "pass", [f.message for f in signed.failing()]
    unsigned = dataclasses.replace(
        _request(setup, "default"), attestations=None, chain_policy=None, artifacts=()
    )
    judged = run_gate(unsigned, analyzers=_analyzers())
    assert judged.verdict == "fail"
    assert {"MS308", "MS805"} & {f.rule_id for f in judged.failing()}


def test_cli_gate_with_config_tampered_signature_and_html(
    setup: dict[str, Path], monkeypatch, capsys
) -> None:
    s = setup
    monkeypatch.chdir(s["tmp"])
    (s["tmp"] / "modelseal.toml").write_text(
        'deployed = "deployed"\ntrusted = "trusted"\nsignature = "model.sig"\n'
        'public_key = "k.pub.pem"\nattestations = "atts"\nchain_policy = "chain.toml"\n'
        'artifacts = ["staging"]\nrules = "ours.toml"\n'
    )
    # With the weight-analysis classifier in the tree the noise is classed a full
    # fine-tune, which ours.toml allows everywhere.
    rc = main(["gate", "-f", "html", "-o", "gate.html", "--quiet"])
    page = (s["tmp"] / "gate.html").read_text()
    assert rc == 0, page[:2000]
    assert 'id="chain-svg"' in page and "fine-tune by ml" in page and "verified" in page
    assert "full fine-tune" in page and 'id="heatmap-svg"' in page
    # The text report names the verified signer and chain, and what it did not check.
    capsys.readouterr()
    assert main(["gate"]) == 0
    text = capsys.readouterr().out
    assert ": verified, signed by key " in text
    assert (
        "checked      attestation chain urn:e2e: verified, 2 steps (fine-tune -> fine-tune) "
        "signed by ml" in text
    )
    assert "not checked" not in text
    # a signature by another key: MS801, whatever the rest says
    other = s["tmp"] / "other.pub.pem"
    write_key_pair(generate_private_key(KeyType.ECDSA_P256), s["tmp"] / "o.pem", other)
    assert (
        main(
            [
                "gate",
                "deployed",
                "--no-config",
                "--signature",
                "model.sig",
                "--public-key",
                str(other),
                "-f",
                "json",
                "-o",
                "g.json",
            ]
        )
        == 1
    )
    rules = {f["rule_id"] for f in json.loads((s["tmp"] / "g.json").read_text())["findings"]}
    assert "MS801" in rules
