"""The sign / verify / attest / verify-chain commands end to end (with the scanner)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from scanner.cli.main import main
from signing.keys import KeyType


def _model(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file(
        {
            "layer.0.weight": rng.standard_normal((16, 8)).astype(np.float32),
            "layer.1.weight": rng.standard_normal((8, 4)).astype(np.float32),
        },
        str(folder / "model.safetensors"),
    )
    return folder


def test_sign_verify_and_name_the_modified_tensor(tmp_path, key_files, capsys) -> None:
    model = _model(tmp_path / "m")
    priv, pub = key_files(KeyType.ECDSA_P256)
    sig = tmp_path / "model.sig"
    assert main(["sign", str(model), "--key", str(priv), "-o", str(sig), "--tensors"]) == 0
    assert main(["verify", str(model), "--signature", str(sig), "--public-key", str(pub)]) == 0
    # flip bytes inside layer.1.weight (the last tensor, at the end of the file)
    data = bytearray((model / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (model / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(model), "--signature", str(sig), "--public-key", str(pub)]) == 1
    err = capsys.readouterr().err
    assert "file 'model.safetensors' modified" in err
    assert "tensor 'layer.1.weight' modified" in err and "layer.0.weight" not in err


def test_verify_with_the_vectors(vectors: Path, capsys) -> None:
    folder = vectors / "v1.1.0-sigstore"
    rc = main(
        [
            "verify",
            str(folder),
            "--signature",
            str(folder / "model.sig"),
            "--identity",
            "stefanb@us.ibm.com",
            "--identity-provider",
            "https://sigstore.verify.ibm.com/oauth2",
            "--trust-config",
            str(vectors / "custom_trust_config.json"),
            "--ignore-paths",
            str(folder / "ignore-me"),
            "--format",
            "json",
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True


def test_attest_identical_and_verify_chain(tmp_path, key_files, capsys) -> None:
    trusted = _model(tmp_path / "trusted")
    deployed = _model(tmp_path / "deployed")  # same content: an identical copy
    priv, pub = key_files(KeyType.ED25519)
    atts = tmp_path / "atts"
    atts.mkdir()
    assert (
        main(
            [
                "attest",
                "identical",
                "--input",
                str(trusted),
                "--produced",
                str(deployed),
                "--key",
                str(priv),
                "-o",
                str(atts / "copy.json"),
                "--chain",
                "urn:c",
            ]
        )
        == 0
    )
    from scanner.manifest import build_manifest

    policy = tmp_path / "policy.toml"
    policy.write_text(
        'allowed_kinds = ["identical"]\n'
        f'[roots]\ndigests = ["{build_manifest(trusted).root_digest}"]\n'
        f'[[signers]]\nname = "ops"\npublic_key = "{pub}"\nkinds = ["identical"]\n'
    )
    capsys.readouterr()
    args = ["verify-chain", str(deployed), "--attestations", str(atts), "--policy", str(policy)]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("PASS")
    assert main([*args, "--format", "sarif"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "2.1.0"
    # the scanner re-derives quantize claims: an unchanged copy is no quantization, refused
    quant = tmp_path / "q.json"
    assert (
        main(
            [
                "attest",
                "quantize",
                "--input",
                str(trusted),
                "--produced",
                str(deployed),
                "--key",
                str(priv),
                "-o",
                str(quant),
            ]
        )
        == 1
    )
    assert capsys.readouterr().err == (
        "modelseal: error: refusing to attest 'quantize': claim "
        "fail: quantize does not describe this pair\n"
    )
    assert not quant.exists()
    # --declared-only never signs a claim that was re-checked and failed
    assert (
        main(
            [
                "attest",
                "quantize",
                "--input",
                str(trusted),
                "--produced",
                str(deployed),
                "--key",
                str(priv),
                "-o",
                str(quant),
                "--declared-only",
            ]
        )
        == 1
    )
    assert "claim fail" in capsys.readouterr().err and not quant.exists()
    # a kind that cannot be re-derived is signed as a declaration, without --declared-only
    tune = tmp_path / "tune.json"
    assert (
        main(
            [
                "attest",
                "fine-tune",
                "--input",
                str(trusted),
                "--produced",
                str(deployed),
                "--key",
                str(priv),
                "-o",
                str(tune),
            ]
        )
        == 0
    )
    assert "attested fine-tune (declared-only)" in capsys.readouterr().err
    assert _claim(tune) == ("declared-only", "'fine-tune' cannot be re-derived")
    # an edit after the attestation fails the chain
    save_file({"x": np.zeros(3, np.float32)}, str(deployed / "model.safetensors"))
    assert main(args) == 1
    assert "MSC006" in capsys.readouterr().out


def _claim(attestation: Path) -> tuple[str, str]:
    envelope = json.loads(attestation.read_text())["dsseEnvelope"]
    step = json.loads(base64.b64decode(envelope["payload"]))["predicate"]["step"]
    return step["claim"], step["claimDetail"]


def test_claim_the_checker_cannot_parse_needs_declared_only(tmp_path, key_files, capsys) -> None:
    """A re-derivable kind whose parameters the claim checker does not understand cannot be
    re-checked: attest refuses it unless --declared-only, and verify-chain fails it closed
    (MSC011) instead of stopping."""
    trusted = _model(tmp_path / "trusted")
    deployed = _model(tmp_path / "deployed", seed=1)
    priv, pub = key_files(KeyType.ECDSA_P256)
    atts = tmp_path / "atts"
    atts.mkdir()
    base = [
        "attest",
        "quantize",
        "--input",
        str(trusted),
        "--produced",
        str(deployed),
        "--param",
        "rounding=stochastic",
        "--key",
        str(priv),
        "-o",
        str(atts / "q.json"),
    ]
    assert main(base) == 1
    err = capsys.readouterr().err
    assert (
        "claim could-not-recheck: cannot re-check 'quantize' with parameters "
        "{'rounding': 'stochastic'}"
        in err
        and "unknown parameter 'rounding'" in err
    )
    assert "pass --declared-only" in err and not (atts / "q.json").exists()
    assert main([*base, "--declared-only"]) == 0
    assert "attested quantize (declared-only)" in capsys.readouterr().err
    claim, detail = _claim(atts / "q.json")
    assert claim == "declared-only" and detail.startswith("not re-checked: cannot re-check")
    from scanner.manifest import build_manifest

    policy = tmp_path / "policy.toml"
    policy.write_text(
        'allowed_kinds = ["quantize"]\n'
        f'[roots]\ndigests = ["{build_manifest(trusted).root_digest}"]\n'
        f'[[signers]]\nname = "ci"\npublic_key = "{pub}"\nkinds = ["quantize"]\n'
    )
    assert (
        main(
            [
                "verify-chain",
                str(deployed),
                "--attestations",
                str(atts),
                "--policy",
                str(policy),
                "--artifact",
                str(trusted),
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "MSC011 q.json: 'quantize' claim could not be re-checked: cannot re-check" in out


def test_missing_policy_cannot_complete(tmp_path, capsys) -> None:
    model = _model(tmp_path / "m")
    rc = main(
        [
            "verify-chain",
            str(model),
            "--attestations",
            str(tmp_path),
            "--policy",
            str(tmp_path / "nope.toml"),
        ]
    )
    assert rc == 2
    assert "cannot read policy" in capsys.readouterr().err


def test_artifact_given_as_dot_is_named_and_one_note_only_for_rechecked_kinds(
    tmp_path, key_files, capsys, monkeypatch
) -> None:
    """``--output .`` records the folder's name, not an empty one; the several-inputs note is
    for re-derivable kinds only (a merge is declared-only: no checker sees any input)."""
    base = _model(tmp_path / "base")
    adapter = _model(tmp_path / "adapter", seed=2)
    merged = _model(tmp_path / "merged", seed=3)
    priv, _ = key_files(KeyType.ECDSA_P256)
    monkeypatch.chdir(merged)
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "attest",
                "lora-merge",
                "--input",
                str(base),
                "--input",
                str(adapter),
                "--produced",
                ".",
                "--key",
                str(priv),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "note:" not in capsys.readouterr().err
    envelope = json.loads(out.read_text())["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["subject"][0]["name"] == "merged"
    assert [i["name"] for i in statement["predicate"]["inputs"]] == ["base", "adapter"]
    assert (
        main(
            [
                "attest",
                "convert",
                "--input",
                str(base),
                "--input",
                str(adapter),
                "--produced",
                str(base),
                "--key",
                str(priv),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "note: several inputs; the claim checker sees the first one" in capsys.readouterr().err
