"""DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1).

The signature covers the pre-authentication encoding (PAE) of the payload type and the
payload bytes, never re-serialized JSON, so what is verified is exactly what was signed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from signing.errors import MalformedSignatureError

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """``DSSEv1 <len type> <type> <len body> <body>``, lengths in bytes."""
    ptype = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)


@dataclass(frozen=True)
class EnvelopeSignature:
    """One signature of an envelope."""

    sig: bytes
    keyid: str = ""


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope: the signed bytes, their type and the signatures."""

    payload: bytes
    payload_type: str
    signatures: tuple[EnvelopeSignature, ...] = ()

    def pae(self) -> bytes:
        """The bytes every signature must cover."""
        return pae(self.payload_type, self.payload)

    def to_dict(self) -> dict[str, Any]:
        """Sigstore bundle ``dsseEnvelope`` JSON (base64 fields)."""
        return {
            "payload": base64.b64encode(self.payload).decode(),
            "payloadType": self.payload_type,
            "signatures": [
                {"sig": base64.b64encode(s.sig).decode(), "keyid": s.keyid} for s in self.signatures
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        """Parse a ``dsseEnvelope``; malformed base64 or fields raise MalformedSignatureError."""
        try:
            sigs = tuple(
                EnvelopeSignature(sig=_b64(s["sig"]), keyid=str(s.get("keyid") or ""))
                for s in data.get("signatures") or ()
            )
            return cls(
                payload=_b64(data["payload"]),
                payload_type=str(data["payloadType"]),
                signatures=sigs,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise MalformedSignatureError(f"DSSE envelope is malformed: missing {exc}") from None


def _b64(text: Any) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedSignatureError("DSSE envelope holds invalid base64") from None
