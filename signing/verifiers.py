"""Verifiers: check a bundle's signature and say who signed it.

Each returns a :class:`VerifiedPayload` (the signed bytes and a :class:`SignerIdentity`)
or raises :class:`~signing.errors.VerificationError` with a one-line reason. What the
payload claims is checked by the caller (model digests, attestation chains).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from signing.bundle import MaterialKind, ParsedBundle
from signing.errors import VerificationError
from signing.keys import KeyFileError, PublicKey, key_hint, key_type, verify_bytes


class WrongSignerError(VerificationError):
    """The signature is intact but was made by a key or identity that is not trusted."""


@dataclass(frozen=True)
class SignerIdentity:
    """Who signed: a key id, a certificate subject or a Sigstore identity."""

    method: str
    """``key``, ``certificate`` or ``sigstore``."""
    key_id: str = ""
    """Hex sha256 of the PEM public key (the OMS key hint)."""
    subject: str = ""
    """Certificate subject, or the Sigstore identity (SAN)."""
    issuer: str = ""
    """Certificate chain anchor, or the OIDC issuer."""

    def describe(self) -> str:
        """Short text for reports."""
        if self.method == "sigstore":
            return f"sigstore identity {self.subject} (issuer {self.issuer})"
        if self.method == "certificate":
            return f"certificate '{self.subject}' (anchor '{self.issuer}')"
        return f"key {self.key_id[:16]}"


@dataclass(frozen=True)
class VerifiedPayload:
    """The content of a bundle whose signature verified."""

    payload_type: str
    payload: bytes
    signer: SignerIdentity


class Verifier(Protocol):
    """Checks a bundle's signature."""

    def verify(self, bundle: ParsedBundle) -> VerifiedPayload:
        """Verify and return the payload, or raise VerificationError."""
        ...


@dataclass(frozen=True)
class PublicKeyVerifier:
    """Trusts exactly one public key (ECDSA or Ed25519)."""

    public_key: PublicKey

    def __post_init__(self) -> None:
        key_type(self.public_key)

    @property
    def key_id(self) -> str:
        """The key hint this verifier expects."""
        return key_hint(self.public_key)

    def verify(self, bundle: ParsedBundle) -> VerifiedPayload:
        """Check the DSSE signature with the trusted key."""
        if bundle.material is not MaterialKind.PUBLIC_KEY:
            raise WrongSignerError(
                f"signature was made with a {bundle.material.value} signer, not a plain key; "
                "verify it with the matching method"
            )
        mine = self.key_id
        if bundle.key_hint and bundle.key_hint != mine:
            raise WrongSignerError(
                f"wrong key: signed by key {bundle.key_hint[:16]}, the given public key is "
                f"{mine[:16]}"
            )
        env = bundle.envelope
        if not verify_bytes(self.public_key, env.signatures[0].sig, env.pae()):
            raise VerificationError(
                "signature does not match the signed statement: the statement was altered "
                "after signing, or it was signed by a different key"
            )
        return VerifiedPayload(env.payload_type, env.payload, SignerIdentity("key", mine))


@dataclass(frozen=True)
class CertificateVerifier:
    """Trusts signatures whose certificate chain ends at one of ``anchors``.

    As in OMS, the chain is evaluated at the leaf's notBefore time (there is no trusted
    timestamp in such bundles), and the leaf must allow digital signatures or code
    signing.
    """

    anchors: tuple[x509.Certificate, ...]

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> CertificateVerifier:
        """Load trust anchors (PEM, several per file allowed)."""
        anchors: list[x509.Certificate] = []
        for path in paths:
            try:
                anchors.extend(x509.load_pem_x509_certificates(Path(path).read_bytes()))
            except OSError as exc:
                raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
            except ValueError as exc:
                raise KeyFileError(f"{path} holds no PEM certificate: {exc}") from None
        if not anchors:
            raise KeyFileError("no trust anchor certificate given")
        return cls(tuple(anchors))

    def verify(self, bundle: ParsedBundle) -> VerifiedPayload:
        """Validate the chain, then the DSSE signature with the leaf's key."""
        if bundle.material is not MaterialKind.X509_CHAIN:
            raise WrongSignerError(
                f"signature was made with a {bundle.material.value} signer, not an X.509 chain"
            )
        try:
            certs = [x509.load_der_x509_certificate(c) for c in bundle.certificates]
        except ValueError as exc:
            raise VerificationError(f"bundle certificate is malformed: {exc}") from None
        leaf = certs[0]
        anchor = _build_path(leaf, certs[1:], self.anchors, leaf.not_valid_before_utc)
        _check_leaf_usage(leaf)
        public_key = leaf.public_key()
        key_type(public_key)  # type: ignore[arg-type]
        env = bundle.envelope
        if not verify_bytes(public_key, env.signatures[0].sig, env.pae()):  # type: ignore[arg-type]
            raise VerificationError(
                "signature does not match the signed statement: the statement was altered "
                "after signing"
            )
        ident = SignerIdentity(
            "certificate",
            key_hint(public_key),  # type: ignore[arg-type]
            subject=leaf.subject.rfc4514_string(),
            issuer=anchor.subject.rfc4514_string(),
        )
        return VerifiedPayload(env.payload_type, env.payload, ident)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _valid_at(cert: x509.Certificate, when: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _build_path(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    when: dt.datetime,
) -> x509.Certificate:
    """Walk issuer links from ``leaf`` to a trust anchor; return the anchor."""
    if not _valid_at(leaf, when):
        raise VerificationError("signing certificate is outside its validity period")
    current = leaf
    for _ in range(len(intermediates) + 1):
        for anchor in anchors:
            if anchor == current:
                return anchor
            if _issued_by(current, anchor):
                if not (_is_ca(anchor) and _valid_at(anchor, when)):
                    raise VerificationError(
                        f"trust anchor '{anchor.subject.rfc4514_string()}' is not a valid CA "
                        "at signing time"
                    )
                return anchor
        nxt = next((c for c in intermediates if _issued_by(current, c)), None)
        if nxt is None:
            break
        if not (_is_ca(nxt) and _valid_at(nxt, when)):
            raise VerificationError(
                f"intermediate '{nxt.subject.rfc4514_string()}' is not a valid CA at signing time"
            )
        current = nxt
    raise WrongSignerError(
        f"certificate '{leaf.subject.rfc4514_string()}' does not chain to a trusted CA "
        "(wrong certificate chain or CA)"
    )


def _check_leaf_usage(leaf: x509.Certificate) -> None:
    try:
        if leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return
    except x509.ExtensionNotFound:
        pass
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING in eku:
            return
    except x509.ExtensionNotFound:
        pass
    raise VerificationError(
        "signing certificate is not allowed to make signatures "
        "(no digitalSignature key usage or codeSigning EKU)"
    )
