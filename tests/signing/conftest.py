"""Fixtures for the signing tests: fresh keys per run, real files in tmp_path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from signing.keys import KeyType, generate_private_key, write_key_pair


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The OMS interop vectors of the reference implementation, kept in the repository
    (origin and licence in their README and LICENSE); missing vectors are a failure."""
    path = Path(__file__).resolve().parent / "data" / "model-transparency"
    if not (path / "README.md").is_file():
        pytest.fail(f"OMS interop vectors not found at {path}")
    return path


@pytest.fixture
def key_files(tmp_path: Path) -> Callable[[KeyType], tuple[Path, Path]]:
    """Write a fresh key pair of a given type; returns (private, public) paths."""

    def make(kind: KeyType) -> tuple[Path, Path]:
        priv, pub = tmp_path / f"{kind.value}.pem", tmp_path / f"{kind.value}.pub.pem"
        write_key_pair(generate_private_key(kind), priv, pub)
        return priv, pub

    return make


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A small model folder with nested files and names that sort differently by string
    and by path components (``a-c`` vs ``a/b``)."""
    rng = np.random.default_rng(7)
    root = tmp_path / "model"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").write_bytes(rng.bytes(70_000))
    (root / "a-c").write_bytes(rng.bytes(1000))
    (root / "weights.bin").write_bytes(rng.bytes(300_000))
    (root / ".gitattributes").write_text("*.bin filter=lfs\n")
    return root


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="session")
def cert_chain() -> dict[str, object]:
    """Root CA -> intermediate CA -> leaf (EC P-256, digitalSignature)."""
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=30)

    def build(subject, issuer, key, signer_key, ca, usage_sign=False):
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usage_sign:
            b = b.add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
        return b.sign(signer_key, hashes.SHA256())

    root_key = ec.generate_private_key(ec.SECP256R1())
    int_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = build("test-root", "test-root", root_key, root_key, True)
    inter = build("test-int", "test-root", int_key, root_key, True)
    leaf = build("test-leaf", "test-int", leaf_key, int_key, False, usage_sign=True)
    other_root_key = ec.generate_private_key(ec.SECP256R1())
    other_root = build("other-root", "other-root", other_root_key, other_root_key, True)
    return {
        "root": root,
        "int": inter,
        "leaf": leaf,
        "leaf_key": leaf_key,
        "other_root": other_root,
    }
