"""Signers: turn statement bytes into a Sigstore bundle.

Every signer has one method, ``sign(payload, payload_type) -> bundle JSON``, so model
signatures and step attestations share the same code path and bundle format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from signing.bundle import chain_bundle, key_bundle
from signing.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, EnvelopeSignature
from signing.errors import SigningError
from signing.keys import (
    KeyFileError,
    KeyType,
    PrivateKey,
    key_hint,
    key_type,
    load_private_key,
    sign_bytes,
)


class Signer(Protocol):
    """Anything that can sign a DSSE payload into a bundle."""

    def sign(self, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> str:
        """Return the Sigstore bundle JSON holding a DSSE envelope over ``payload``."""
        ...


@dataclass(frozen=True)
class KeySigner:
    """Signs with a private key; with ``certificates`` the bundle carries the X.509 chain
    (leaf first) instead of a key hint."""

    private_key: PrivateKey
    certificates: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        key_type(self.private_key)
        if self.certificates:
            leaf_key = self.certificates[0].public_key()
            mine = self.private_key.public_key()
            fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            if leaf_key.public_bytes(*fmt) != mine.public_bytes(*fmt):
                raise SigningError(
                    "the signing certificate does not certify this private key; pass the "
                    "leaf certificate that matches --key"
                )

    @property
    def key_type(self) -> KeyType:
        """The key method, e.g. ``ecdsa-p256``."""
        return key_type(self.private_key)

    @classmethod
    def from_files(
        cls,
        key_path: Path,
        *,
        password: bytes | None = None,
        certificate: Path | None = None,
        chain: Sequence[Path] = (),
    ) -> KeySigner:
        """Load the key and, for certificate signing, the leaf and intermediate PEMs."""
        key = load_private_key(key_path, password)
        certs: list[x509.Certificate] = []
        if certificate is not None:
            certs.extend(_load_certs(certificate))
            for path in chain:
                certs.extend(_load_certs(path))
        elif chain:
            raise SigningError("--certificate-chain needs --certificate (the leaf)")
        return cls(key, tuple(certs))

    def sign(self, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> str:
        """Sign ``payload`` (DSSE PAE) and wrap it in a bundle."""
        envelope = Envelope(payload, payload_type)
        sig = sign_bytes(self.private_key, envelope.pae())
        envelope = Envelope(payload, payload_type, (EnvelopeSignature(sig, ""),))
        if self.certificates:
            return chain_bundle(
                envelope,
                tuple(c.public_bytes(serialization.Encoding.DER) for c in self.certificates),
            )
        return key_bundle(envelope, key_hint(self.private_key.public_key()))


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read certificate {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise KeyFileError(f"{path} holds no PEM certificate: {exc}") from None
    return certs
