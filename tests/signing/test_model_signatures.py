"""Sign/verify round trips for every key type, tamper cases, and the real OMS vectors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from model_signing import hashing as ms_hashing
from model_signing import signing as ms_signing
from model_signing import verifying as ms_verifying

from signing.bundle import parse_bundle
from signing.errors import VerificationError
from signing.keys import KeyType, load_private_key, load_public_key
from signing.manifest import Manifest, TensorDigest
from signing.model_signature import ModelMismatchError, sign_model, verify_model
from signing.signers import KeySigner
from signing.sigstore_keyless import (
    IdentityPolicy,
    SigstoreVerifier,
    TrustRootError,
    load_trusted_root,
)
from signing.verifiers import CertificateVerifier, PublicKeyVerifier, WrongSignerError

ALL_KEYS = [KeyType.ECDSA_P256, KeyType.ECDSA_P384, KeyType.ED25519]
IBM = IdentityPolicy("stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2")


def _signed(model_dir: Path, key_files, kind: KeyType):
    priv, pub = key_files(kind)
    signer = KeySigner(load_private_key(priv))
    bundle = sign_model(model_dir, signer).bundle
    return bundle, PublicKeyVerifier(load_public_key(pub))


@pytest.mark.parametrize("kind", ALL_KEYS, ids=lambda k: k.value)
def test_round_trip(model_dir: Path, key_files, kind: KeyType) -> None:
    bundle, verifier = _signed(model_dir, key_files, kind)
    result = verify_model(model_dir, bundle, verifier)
    assert result.signer.method == "key"
    assert {r.name for r in result.manifest.resources} == {"a/b", "a-c", "weights.bin"}
    data = json.loads(bundle)
    assert data["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert data["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"


def test_certificate_chain_round_trip(model_dir: Path, cert_chain, tmp_path: Path) -> None:
    signer = KeySigner(cert_chain["leaf_key"], (cert_chain["leaf"], cert_chain["int"]))
    bundle = sign_model(model_dir, signer).bundle
    result = verify_model(model_dir, bundle, CertificateVerifier((cert_chain["root"],)))
    assert result.signer.subject == "CN=test-leaf"
    with pytest.raises(WrongSignerError, match="does not chain to a trusted CA"):
        verify_model(model_dir, bundle, CertificateVerifier((cert_chain["other_root"],)))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: (d / "weights.bin").write_bytes(b"x" + (d / "weights.bin").read_bytes()[1:]),
            r"file 'weights.bin' modified",
        ),
        (lambda d: (d / "extra.txt").write_text("hi"), r"file 'extra.txt' added"),
        (lambda d: (d / "a" / "b").unlink(), r"file 'a/b' missing"),
    ],
    ids=["modified", "added", "removed"],
)
@pytest.mark.parametrize("kind", ALL_KEYS, ids=lambda k: k.value)
def test_tampered_model_names_the_file(model_dir, key_files, kind, mutate, expected) -> None:
    bundle, verifier = _signed(model_dir, key_files, kind)
    mutate(model_dir)
    with pytest.raises(ModelMismatchError, match=expected):
        verify_model(model_dir, bundle, verifier)


def test_wrong_key_is_named(model_dir: Path, key_files) -> None:
    bundle, _ = _signed(model_dir, key_files, KeyType.ECDSA_P256)
    other = load_public_key(key_files(KeyType.ECDSA_P384)[1])
    with pytest.raises(WrongSignerError, match="wrong key"):
        verify_model(model_dir, bundle, PublicKeyVerifier(other))


def test_forged_statement_under_old_signature(model_dir: Path, key_files) -> None:
    bundle, verifier = _signed(model_dir, key_files, KeyType.ED25519)
    data = json.loads(bundle)
    env = parse_bundle(bundle).envelope
    forged = env.payload.replace(b'"weights.bin"', b'"weights.bim"')
    import base64

    data["dsseEnvelope"]["payload"] = base64.b64encode(forged).decode()
    with pytest.raises(VerificationError, match="altered after signing"):
        verify_model(model_dir, json.dumps(data), verifier)


def test_modified_tensor_is_named(model_dir: Path, key_files) -> None:
    tensors = Manifest(
        "test",
        tensors=(TensorDigest("layer.0.weight", "F32", (2,), "sha256:" + "1" * 64, "weights.bin"),),
    )
    priv, pub = key_files(KeyType.ECDSA_P256)
    bundle = sign_model(
        model_dir, KeySigner(load_private_key(priv)), tensor_manifest=tensors
    ).bundle
    (model_dir / "weights.bin").write_bytes(b"changed")
    changed = Manifest(
        "test",
        tensors=(TensorDigest("layer.0.weight", "F32", (2,), "sha256:" + "2" * 64, "weights.bin"),),
    )
    with pytest.raises(ModelMismatchError, match=r"tensor 'layer.0.weight' modified"):
        verify_model(
            model_dir,
            bundle,
            PublicKeyVerifier(load_public_key(pub)),
            tensor_builder=lambda _p: changed,
        )


# --- interop with model_signing, both ways ------------------------------------------


def test_model_signing_signature_verifies_with_modelseal(model_dir, key_files, tmp_path):
    priv, pub = key_files(KeyType.ECDSA_P256)
    sig = tmp_path / "ms.sig"
    ms_signing.Config().use_elliptic_key_signer(private_key=priv).set_hashing_config(
        ms_hashing.Config().set_ignored_paths(paths=["weights.bin"])
    ).sign(model_dir, sig)
    result = verify_model(model_dir, sig.read_text(), PublicKeyVerifier(load_public_key(pub)))
    assert "weights.bin" not in result.manifest.digests()
    (model_dir / "a-c").write_bytes(b"tampered")
    with pytest.raises(ModelMismatchError, match="'a-c' modified"):
        verify_model(model_dir, sig.read_text(), PublicKeyVerifier(load_public_key(pub)))


@pytest.mark.parametrize("kind", [KeyType.ECDSA_P256, KeyType.ECDSA_P384], ids=lambda k: k.value)
def test_modelseal_signature_verifies_with_model_signing(model_dir, key_files, tmp_path, kind):
    priv, pub = key_files(kind)
    sig = tmp_path / "model.sig"
    sig.write_text(
        sign_model(
            model_dir, KeySigner(load_private_key(priv)), ignore_paths=["weights.bin"]
        ).bundle
    )
    config = ms_verifying.Config().use_elliptic_key_verifier(public_key=pub)
    config.verify(model_dir, sig)  # raises on failure
    (model_dir / "a" / "b").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="Signature mismatch"):
        ms_verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(model_dir, sig)


def test_modelseal_certificate_signature_verifies_with_model_signing(
    model_dir, cert_chain, tmp_path
) -> None:
    signer = KeySigner(cert_chain["leaf_key"], (cert_chain["leaf"], cert_chain["int"]))
    sig = tmp_path / "model.sig"
    sig.write_text(sign_model(model_dir, signer).bundle)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(cert_chain["root"].public_bytes(serialization.Encoding.PEM))
    ms_verifying.Config().use_certificate_verifier(certificate_chain=[ca]).verify(model_dir, sig)


# --- the real vectors from model-transparency ----------------------------------------


def _vector_verifier(vectors: Path, name: str):
    if name.endswith("sigstore"):
        root = load_trusted_root(trust_config=vectors / "custom_trust_config.json")
        return SigstoreVerifier(root, (IBM,))
    if name.endswith("certificate"):
        return CertificateVerifier.from_files([vectors / "keys/certificate/ca-cert.pem"])
    return PublicKeyVerifier(load_public_key(vectors / "keys/certificate/signing-key-pub.pem"))


VECTORS = ["v1.1.0-sigstore", "v1.0.1-sigstore", "v1.1.0-elliptic-key", "v1.1.0-certificate"]


@pytest.mark.parametrize("name", VECTORS)
def test_vector_verifies_offline(vectors: Path, name: str) -> None:
    folder = vectors / name
    result = verify_model(
        folder,
        (folder / "model.sig").read_text(),
        _vector_verifier(vectors, name),
        ignore_paths=["ignore-me", "model.sig"],
    )
    assert {r.name for r in result.manifest.resources} == {"signme-1", "signme-2"}


@pytest.mark.parametrize("name", VECTORS)
def test_vector_fails_after_one_byte_change(vectors: Path, name: str, tmp_path: Path) -> None:
    folder = tmp_path / name
    shutil.copytree(vectors / name, folder)
    data = bytearray((folder / "signme-2").read_bytes())
    data[0] ^= 0x01
    (folder / "signme-2").write_bytes(bytes(data))
    with pytest.raises(ModelMismatchError, match="file 'signme-2' modified"):
        verify_model(
            folder,
            (folder / "model.sig").read_text(),
            _vector_verifier(vectors, name),
            ignore_paths=["ignore-me", "model.sig"],
        )


def test_vector_wrong_sigstore_identity(vectors: Path) -> None:
    folder = vectors / "v1.1.0-sigstore"
    root = load_trusted_root(trust_config=vectors / "custom_trust_config.json")
    wrong = SigstoreVerifier(root, (IdentityPolicy("mallory@example.com", IBM.issuer),))
    with pytest.raises(WrongSignerError, match=r"wrong identity: signed by stefanb@us\.ibm\.com"):
        verify_model(folder, (folder / "model.sig").read_text(), wrong, ignore_paths=["ignore-me"])
    wrong_issuer = SigstoreVerifier(root, (IdentityPolicy(IBM.identity, "https://evil"),))
    with pytest.raises(WrongSignerError, match="wrong identity"):
        verify_model(
            folder, (folder / "model.sig").read_text(), wrong_issuer, ignore_paths=["ignore-me"]
        )


def test_vector_key_bundle_rejected_by_sigstore_verifier(vectors: Path) -> None:
    folder = vectors / "v1.1.0-elliptic-key"
    root = load_trusted_root(trust_config=vectors / "custom_trust_config.json")
    with pytest.raises(WrongSignerError, match="not Sigstore keyless"):
        verify_model(folder, (folder / "model.sig").read_text(), SigstoreVerifier(root, (IBM,)))


def test_sigstore_verification_needs_an_explicit_trust_root() -> None:
    with pytest.raises(TrustRootError, match="exactly one of --trust-config"):
        load_trusted_root()
