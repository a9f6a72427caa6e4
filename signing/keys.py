"""Key loading and raw signature primitives.

Supported: ECDSA on P-256 / P-384 (what OMS verifies; P-521 is accepted too, as OMS
does) with the hash OMS pairs with each curve, and Ed25519 (modelseal's own key method:
``model_signing`` cannot verify it). Anything else is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import os
from enum import Enum
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from signing.errors import ModelsealError, SigningError

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class KeyFileError(ModelsealError):
    """A key file cannot be read or holds an unsupported key type."""


class KeyType(str, Enum):
    """Key methods modelseal signs and verifies with."""

    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    ECDSA_P521 = "ecdsa-p521"
    ED25519 = "ed25519"

    @property
    def oms_compatible(self) -> bool:
        """Whether ``model_signing`` can verify signatures made with this key type."""
        return self is not KeyType.ED25519


_CURVES = {
    "secp256r1": KeyType.ECDSA_P256,
    "secp384r1": KeyType.ECDSA_P384,
    "secp521r1": KeyType.ECDSA_P521,
}
_HASHES = {
    KeyType.ECDSA_P256: hashes.SHA256,
    KeyType.ECDSA_P384: hashes.SHA384,
    KeyType.ECDSA_P521: hashes.SHA512,
}


def key_type(key: PrivateKey | PublicKey) -> KeyType:
    """The :class:`KeyType` of a key; unsupported keys raise :class:`KeyFileError`."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return KeyType.ED25519
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        kt = _CURVES.get(key.curve.name)
        if kt is not None:
            return kt
        raise KeyFileError(f"elliptic curve {key.curve.name} is not supported; use P-256 or P-384")
    raise KeyFileError(
        f"{type(key).__name__} keys are not supported; use ECDSA P-256/P-384 or Ed25519"
    )


def load_private_key(path: Path, password: bytes | None = None) -> PrivateKey:
    """Load a PEM private key (encrypted keys need ``password``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:
        raise KeyFileError(
            f"private key {path} is encrypted; pass its password (--password-env VAR)"
            if password is None
            else f"private key {path} is not encrypted; do not pass a password"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not a usable PEM private key: {exc}") from None
    key_type(key)
    return key  # type: ignore[return-value]


def load_public_key(path: Path) -> PublicKey:
    """Load a PEM public key (SubjectPublicKeyInfo)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from None
    key_type(key)
    return key  # type: ignore[return-value]


def public_pem(key: PublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo bytes."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_hint(key: PublicKey) -> str:
    """Hex sha256 of the PEM public key: OMS's ``publicKey.hint`` and modelseal's key id."""
    return hashlib.sha256(public_pem(key)).hexdigest()


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    """Sign ``data``: ECDSA (DER signature) with the curve's hash, or Ed25519."""
    kt = key_type(key)
    try:
        if kt is KeyType.ED25519:
            return key.sign(data)  # type: ignore[call-arg,union-attr]
        return key.sign(data, ec.ECDSA(_HASHES[kt]()))  # type: ignore[call-arg,union-attr]
    except ValueError as exc:  # pragma: no cover - cryptography rejects the key
        raise SigningError(f"signing failed: {exc}") from None


def verify_bytes(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` over ``data`` verifies with ``key``."""
    kt = key_type(key)
    try:
        if kt is KeyType.ED25519:
            key.verify(signature, data)  # type: ignore[call-arg,union-attr]
        else:
            key.verify(signature, data, ec.ECDSA(_HASHES[kt]()))  # type: ignore[call-arg,union-attr]
    except InvalidSignature:
        return False
    return True


def generate_private_key(kind: KeyType) -> PrivateKey:
    """A fresh key of ``kind`` (tests, demos and ``modelseal`` key set-up)."""
    if kind is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    curve = {
        KeyType.ECDSA_P256: ec.SECP256R1,
        KeyType.ECDSA_P384: ec.SECP384R1,
        KeyType.ECDSA_P521: ec.SECP521R1,
    }[kind]
    return ec.generate_private_key(curve())


def write_key_pair(key: PrivateKey, private_path: Path, public_path: Path) -> None:
    """Write an unencrypted PKCS#8 private key (mode 0600) and its public key as PEM."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    Path(public_path).write_bytes(public_pem(key.public_key()))
