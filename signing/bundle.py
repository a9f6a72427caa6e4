"""Sigstore bundle v0.3 JSON: the container for every modelseal signature.

Key- and certificate-signed bundles carry no transparency-log entry, which
sigstore-python's ``Bundle`` refuses to load, so they are read and written here (the
same shape ``model_signing`` writes). Keyless bundles are handed to sigstore-python.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from signing.dsse import Envelope
from signing.errors import MalformedSignatureError, ModelsealError, VerificationError

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_ACCEPTED_MEDIA_TYPES = (
    BUNDLE_MEDIA_TYPE,
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
)


class UnsignedError(VerificationError):
    """The file holds a statement or envelope without any signature."""


class MaterialKind(str, Enum):
    """How a bundle says who signed it."""

    PUBLIC_KEY = "public-key"
    X509_CHAIN = "x509-chain"
    SIGSTORE = "sigstore"
    """A Fulcio-style certificate plus transparency-log evidence (keyless)."""


@dataclass(frozen=True)
class ParsedBundle:
    """A bundle read from JSON, not yet verified."""

    media_type: str
    material: MaterialKind
    envelope: Envelope
    key_hint: str = ""
    certificates: tuple[bytes, ...] = ()
    """DER certificates, leaf first."""
    text: str = ""
    """The original JSON, kept for sigstore-python (keyless bundles)."""


def key_bundle(envelope: Envelope, hint: str) -> str:
    """Bundle JSON for a signature made with a plain key (no certificate, no log)."""
    return _dump(envelope, {"publicKey": {"hint": hint}, "tlogEntries": []})


def chain_bundle(envelope: Envelope, certificates_der: tuple[bytes, ...]) -> str:
    """Bundle JSON for a signature made with a key certified by an X.509 chain."""
    certs = [{"rawBytes": base64.b64encode(c).decode()} for c in certificates_der]
    return _dump(envelope, {"x509CertificateChain": {"certificates": certs}, "tlogEntries": []})


def _dump(envelope: Envelope, material: dict[str, Any]) -> str:
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": envelope.to_dict(),
    }
    return json.dumps(bundle, indent=2) + "\n"


def read_bundle_text(path: Path, what: str = "signature") -> str:
    """A bundle file's text. A file that cannot be read, or is binary, is an input that
    cannot be used (exit 2), not a signature that failed to verify."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelsealError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedSignatureError(
            f"{what} {path} is not a Sigstore bundle: it is binary, not JSON text"
        ) from None


def parse_bundle(text: str, source: str = "signature") -> ParsedBundle:
    """Read a bundle; raises :class:`VerificationError` naming ``source`` if malformed."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedSignatureError(f"{source} is not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise MalformedSignatureError(f"{source} is not a Sigstore bundle (JSON object expected)")
    media_type = str(data.get("mediaType", ""))
    if media_type not in _ACCEPTED_MEDIA_TYPES:
        if "_type" in data and "predicateType" in data:
            raise UnsignedError(
                f"{source} is a bare in-toto statement with no signature (unsigned)"
            )
        raise MalformedSignatureError(
            f"{source} has media type {media_type!r}; expected a Sigstore bundle v0.3"
        )
    if "dsseEnvelope" not in data:
        raise MalformedSignatureError(
            f"{source} holds no DSSE envelope (message signatures are not used for models)"
        )
    envelope = Envelope.from_dict(data["dsseEnvelope"])
    if not envelope.signatures:
        raise UnsignedError(f"{source} has a DSSE envelope with no signature (unsigned)")
    if len(envelope.signatures) != 1:
        raise VerificationError(
            f"{source} has {len(envelope.signatures)} signatures; exactly one is expected"
        )
    material = data.get("verificationMaterial") or {}
    try:
        if "certificate" in material:
            der = _b64(material["certificate"]["rawBytes"])
            return ParsedBundle(
                media_type, MaterialKind.SIGSTORE, envelope, certificates=(der,), text=text
            )
        if "x509CertificateChain" in material:
            certs = tuple(
                _b64(c["rawBytes"]) for c in material["x509CertificateChain"]["certificates"]
            )
            if not certs:
                raise VerificationError(f"{source} has an empty certificate chain")
            return ParsedBundle(
                media_type, MaterialKind.X509_CHAIN, envelope, certificates=certs, text=text
            )
        if "publicKey" in material:
            hint = str((material["publicKey"] or {}).get("hint") or "")
            return ParsedBundle(
                media_type, MaterialKind.PUBLIC_KEY, envelope, key_hint=hint, text=text
            )
    except (KeyError, TypeError) as exc:
        raise MalformedSignatureError(
            f"{source} verification material is malformed: {exc}"
        ) from None
    raise MalformedSignatureError(f"{source} has no public key, certificate chain or certificate")


def _b64(text: Any) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedSignatureError("bundle holds invalid base64") from None
