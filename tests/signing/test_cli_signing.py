"""The sign / verify / attest / verify-chain commands end to end (with the scanner)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from scanner.cli.main import main
from signing.keys import KeyType


def _model(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({"layer.0.weight": rng.standard_normal((16, 8)).astype(np.float32),
               "layer.1.weight": rng.standard_normal((8, 4)).astype(np.float32)},
              str(folder / "model.safetensors"))
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
    rc = main(["verify", str(folder), "--signature", str(folder / "model.sig"),
               "--identity", "stefanb@us.ibm.com",
               "--identity-provider", "https://sigstore.verify.ibm.com/oauth2",
               "--trust-config", str(vectors / "custom_trust_config.json"),
               "--ignore-paths", str(folder / "ignore-me"), "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True


def test_attest_identical_and_verify_chain(tmp_path, key_files, capsys) -> None:
    trusted = _model(tmp_path / "trusted")
    deployed = _model(tmp_path / "deployed")  # same content: an identical copy
    priv, pub = key_files(KeyType.ED25519)
    atts = tmp_path / "atts"
    atts.mkdir()
    assert main(["attest", "identical", "--input", str(trusted), "--output", str(deployed),
                 "--key", str(priv), "-o", str(atts / "copy.json"), "--chain", "urn:c"]) == 0
    from scanner.manifest import build_manifest

    policy = tmp_path / "policy.toml"
    policy.write_text(
        'allowed_kinds = ["identical"]\n'
        f'[roots]\ndigests = ["{build_manifest(trusted).root_digest}"]\n'
        f'[[signers]]\nname = "ops"\npublic_key = "{pub}"\nkinds = ["identical"]\n')
    capsys.readouterr()
    args = ["verify-chain", str(deployed), "--attestations", str(atts), "--policy", str(policy)]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("PASS")
    assert main([*args, "--format", "sarif"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "2.1.0"
    # a quantize claim cannot be re-derived by this scanner yet: attest refuses
    assert main(["attest", "quantize", "--input", str(trusted), "--output", str(deployed),
                 "--key", str(priv), "-o", str(tmp_path / "q.json")]) == 1
    assert "could-not-recheck" in capsys.readouterr().err
    # an edit after the attestation fails the chain
    save_file({"x": np.zeros(3, np.float32)}, str(deployed / "model.safetensors"))
    assert main(args) == 1
    assert "MSC006" in capsys.readouterr().out


def test_missing_policy_cannot_complete(tmp_path, capsys) -> None:
    model = _model(tmp_path / "m")
    rc = main(["verify-chain", str(model), "--attestations", str(tmp_path),
               "--policy", str(tmp_path / "nope.toml")])
    assert rc == 2
    assert "cannot read policy" in capsys.readouterr().err
