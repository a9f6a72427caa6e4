"""Sigstore keyless signing (in CI) and fully offline verification of Sigstore bundles.

Signing goes through sigstore-python: an OIDC identity token (explicit, or detected from
ambient CI credentials such as GitHub Actions' ``id-token: write``) is exchanged for a
short-lived Fulcio certificate and the signature is logged in Rekor. There is
deliberately no interactive browser flow: modelseal signs in pipelines.

Verification never touches the network: the trust root (Fulcio CAs, Rekor keys, TSAs)
comes from a file the caller supplies, and the signer must match an identity + issuer
policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from sigstore import dsse as sigstore_dsse
from sigstore import errors as sigstore_errors
from sigstore import oidc as sigstore_oidc
from sigstore.models import Bundle, ClientTrustConfig, InvalidBundle, TrustedRoot
from sigstore.sign import SigningContext
from sigstore.verify import Verifier as _SigstoreVerifier
from sigstore.verify import policy as sigstore_policy

from signing.bundle import MaterialKind, ParsedBundle
from signing.dsse import IN_TOTO_PAYLOAD_TYPE
from signing.errors import ModelsealError, SigningError, VerificationError
from signing.verifiers import SignerIdentity, VerifiedPayload, WrongSignerError

_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
DEFAULT_CLIENT_ID = "sigstore"


class TrustRootError(ModelsealError):
    """The Sigstore trust configuration or trusted root cannot be used."""


def load_trust_config(path: Path) -> ClientTrustConfig:
    """Read a ClientTrustConfig JSON (trusted root + signing config)."""
    try:
        return ClientTrustConfig.from_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrustRootError(f"cannot read trust config {path}: {exc.strerror}") from None
    except Exception as exc:  # sigstore raises pydantic/own errors for bad input
        raise TrustRootError(f"{path} is not a Sigstore ClientTrustConfig: {exc}") from None


def load_trusted_root(
    *, trust_config: Path | None = None, trusted_root: Path | None = None
) -> TrustedRoot:
    """The trusted root from ``--trust-config`` or ``--trusted-root`` (exactly one)."""
    if (trust_config is None) == (trusted_root is None):
        raise TrustRootError(
            "offline Sigstore verification needs exactly one of --trust-config or "
            "--trusted-root (the public-good instance's trusted_root.json works)"
        )
    if trust_config is not None:
        return load_trust_config(trust_config).trusted_root
    try:
        return TrustedRoot.from_file(str(trusted_root))
    except OSError as exc:
        raise TrustRootError(f"cannot read trusted root {trusted_root}: {exc.strerror}") from None
    except Exception as exc:
        raise TrustRootError(f"{trusted_root} is not a Sigstore TrustedRoot: {exc}") from None


def certificate_identity(cert: x509.Certificate) -> tuple[str, str]:
    """(identity, OIDC issuer) recorded in a Fulcio certificate, for messages."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [
            *san.get_values_for_type(x509.RFC822Name),
            *san.get_values_for_type(x509.UniformResourceIdentifier),
        ]
        identity = names[0] if names else ""
    except x509.ExtensionNotFound:
        identity = ""
    issuer = ""
    for oid in (_ISSUER_V2, _ISSUER_V1):
        try:
            raw = cert.extensions.get_extension_for_oid(oid).value.value  # type: ignore[attr-defined]
        except x509.ExtensionNotFound:
            continue
        # v2 is a DER UTF8String (tag 0x0c + short length), v1 the raw bytes.
        issuer = (raw[2:] if oid == _ISSUER_V2 and raw[:1] == b"\x0c" else raw).decode(
            "utf-8", "replace"
        )
        break
    return identity, issuer


@dataclass(frozen=True)
class IdentityPolicy:
    """A Sigstore signer allowed by the caller: certificate SAN and OIDC issuer."""

    identity: str
    issuer: str


@dataclass(frozen=True)
class SigstoreVerifier:
    """Verifies keyless bundles offline against ``trusted_root`` and an identity policy."""

    trusted_root: TrustedRoot
    identities: tuple[IdentityPolicy, ...]

    def __post_init__(self) -> None:
        if not self.identities:
            # An empty policy would accept anyone the CA certified: refuse, never default.
            raise VerificationError("Sigstore verification needs an --identity and --issuer")

    def verify(self, bundle: ParsedBundle) -> VerifiedPayload:
        """Verify certificate, log inclusion, timestamps, identity, then the DSSE signature."""
        if bundle.material is not MaterialKind.SIGSTORE:
            raise WrongSignerError(
                f"signature was made with a {bundle.material.value} signer, not Sigstore "
                "keyless; verify it with --public-key or --certificate-chain"
            )
        try:
            sig_bundle = Bundle.from_json(bundle.text)
        except (InvalidBundle, ValueError) as exc:
            raise VerificationError(f"Sigstore bundle is invalid: {exc}") from None
        identity, issuer = certificate_identity(sig_bundle.signing_certificate)
        allowed = [p for p in self.identities if p.identity == identity and p.issuer == issuer]
        if not allowed:
            wanted = ", ".join(f"{p.identity} (issuer {p.issuer})" for p in self.identities)
            raise WrongSignerError(
                f"wrong identity: signed by {identity} (issuer {issuer}); expected {wanted}"
            )
        policy = sigstore_policy.Identity(identity=allowed[0].identity, issuer=allowed[0].issuer)
        verifier = _SigstoreVerifier(trusted_root=self.trusted_root)
        try:
            ptype, payload = verifier.verify_dsse(sig_bundle, policy)
        except sigstore_errors.VerificationError as exc:
            raise VerificationError(f"Sigstore bundle does not verify: {exc}") from None
        return VerifiedPayload(ptype, payload, SignerIdentity("sigstore", "", identity, issuer))


@dataclass(frozen=True)
class KeylessSigner:
    """Sign through Sigstore with an OIDC identity (CI ambient credentials by default)."""

    trust_config: ClientTrustConfig
    identity_token: str | None = None
    client_id: str = DEFAULT_CLIENT_ID

    @classmethod
    def create(
        cls,
        *,
        trust_config: Path | None = None,
        staging: bool = False,
        identity_token: str | None = None,
    ) -> KeylessSigner:
        """Build from a trust config file, or the staging / production instance."""
        if trust_config is not None:
            config = load_trust_config(trust_config)
        else:
            try:
                # Fetches the instance's trust config over TUF (network).
                config = ClientTrustConfig.staging() if staging else ClientTrustConfig.production()
            except Exception as exc:
                raise SigningError(
                    f"cannot fetch the Sigstore trust config ({exc}); pass --trust-config"
                ) from None
        return cls(config, identity_token)

    def signing_context(self) -> SigningContext:
        """The Fulcio/Rekor/TSA clients named by the trust config (no network yet)."""
        try:
            return SigningContext.from_trust_config(self.trust_config)
        except Exception as exc:
            raise SigningError(f"trust config cannot be used for signing: {exc}") from None

    def resolve_token(self) -> sigstore_oidc.IdentityToken:
        """The explicit token, else ambient CI credentials; never an interactive flow."""
        raw = self.identity_token
        if not raw:
            try:
                raw = sigstore_oidc.detect_credential(self.client_id)
            except sigstore_oidc.IdentityError as exc:
                raise SigningError(f"ambient OIDC credential detection failed: {exc}") from None
        if not raw:
            raise SigningError(
                "no OIDC identity token for keyless signing: run in CI with ambient "
                "credentials (GitHub Actions: permissions id-token: write) or pass "
                "--identity-token"
            )
        try:
            return sigstore_oidc.IdentityToken(raw, self.client_id)
        except sigstore_oidc.IdentityError as exc:
            raise SigningError(f"OIDC identity token is not usable: {exc}") from None

    def sign(self, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> str:
        """Sign an in-toto statement; returns the Sigstore bundle JSON."""
        if payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise SigningError("Sigstore keyless signing only signs in-toto statements")
        try:
            statement = sigstore_dsse.Statement(payload)
        except sigstore_errors.Error as exc:
            raise SigningError(f"statement rejected by sigstore: {exc}") from None
        token = self.resolve_token()
        context = self.signing_context()
        try:
            with context.signer(token) as signer:
                bundle = signer.sign_dsse(statement)
        except sigstore_errors.Error as exc:
            raise SigningError(f"Sigstore signing failed: {exc}") from None
        return bundle.to_json()


def identity_policies(pairs: Sequence[tuple[str, str]]) -> tuple[IdentityPolicy, ...]:
    """Build policies from (identity, issuer) pairs."""
    return tuple(IdentityPolicy(i, s) for i, s in pairs)
