"""Chain policies: who may sign which transformation, and what counts as a trusted root.

Read from TOML (docs/policy.md). Unknown keys are errors, not ignored, because a typo
in a security policy must not silently widen it. Paths inside the policy are relative to
the policy file.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from signing.errors import ModelsealError
from signing.keys import PublicKey, key_hint, load_public_key
from signing.verifiers import CertificateVerifier

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class PolicyError(ModelsealError):
    """The chain policy file is missing, malformed or inconsistent (exit 2)."""


_TOP_KEYS = {
    "version",
    "chain",
    "allowed_kinds",
    "require_recheck",
    "not_before",
    "not_after",
    "trust_config",
    "trusted_root",
    "roots",
    "signers",
}
_ROOT_KEYS = {"digests", "signers"}
_SIGNER_KEYS = {"name", "kinds", "public_key", "certificate_chain", "identity", "issuer"}


@dataclass(frozen=True)
class PolicySigner:
    """One allowed signer and the step kinds it may attest."""

    name: str
    kinds: frozenset[str]
    public_key: PublicKey | None = None
    anchors: tuple[x509.Certificate, ...] = ()
    identity: str = ""
    issuer: str = ""

    @property
    def method(self) -> str:
        """``key``, ``certificate`` or ``sigstore``."""
        if self.public_key is not None:
            return "key"
        return "certificate" if self.anchors else "sigstore"

    @property
    def key_id(self) -> str:
        """Key hint of a key signer, else empty."""
        return key_hint(self.public_key) if self.public_key is not None else ""

    def may_sign(self, kind: str) -> bool:
        """Whether this signer is allowed to attest ``kind``."""
        return kind in self.kinds

    def certificate_verifier(self) -> CertificateVerifier:
        """Verifier for a certificate signer."""
        return CertificateVerifier(self.anchors)


@dataclass(frozen=True)
class ChainPolicy:
    """A parsed chain policy."""

    allowed_kinds: frozenset[str]
    signers: tuple[PolicySigner, ...]
    root_digests: frozenset[str] = frozenset()
    root_signers: frozenset[str] = frozenset()
    chain_id: str = ""
    require_recheck: bool = False
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    trust_config: Path | None = None
    trusted_root: Path | None = None

    def __post_init__(self) -> None:
        if not self.root_digests and not self.root_signers:
            raise PolicyError("policy trusts no root: set roots.digests or roots.signers")
        names = [s.name for s in self.signers]
        if len(set(names)) != len(names):
            raise PolicyError("policy lists a signer name twice")
        unknown = self.root_signers - set(names)
        if unknown:
            raise PolicyError(f"roots.signers names unknown signers: {sorted(unknown)}")
        for signer in self.signers:
            extra = signer.kinds - self.allowed_kinds
            if extra:
                raise PolicyError(
                    f"signer '{signer.name}' may sign {sorted(extra)}, which allowed_kinds "
                    "does not list"
                )

    def time_problem(self, when: dt.datetime) -> str:
        """Why ``when`` is outside the policy's validity window; empty if inside."""
        if self.not_before is not None and when < self.not_before:
            return (
                f"policy is not yet valid at {when.isoformat()} "
                f"(not_before {self.not_before.isoformat()})"
            )
        if self.not_after is not None and when > self.not_after:
            return f"policy expired at {self.not_after.isoformat()} (checked at {when.isoformat()})"
        return ""

    def signer(self, name: str) -> PolicySigner | None:
        """The signer called ``name``."""
        return next((s for s in self.signers if s.name == name), None)


def load_policy(path: Path) -> ChainPolicy:
    """Read and validate a policy TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {path} is not valid TOML: {exc}") from None
    return parse_policy(data, path.parent)


def parse_policy(data: Mapping[str, Any], base_dir: Path) -> ChainPolicy:
    """Build a :class:`ChainPolicy` from parsed TOML; paths are relative to ``base_dir``."""
    _no_unknown(data, _TOP_KEYS, "policy")
    if data.get("version", 1) != 1:
        raise PolicyError(f"policy version {data.get('version')!r} is not supported (use 1)")
    kinds = _str_list(data.get("allowed_kinds"), "allowed_kinds")
    if not kinds:
        raise PolicyError("policy allowed_kinds is empty: list the step kinds you accept")
    roots = data.get("roots", {})
    if not isinstance(roots, Mapping):
        raise PolicyError("policy [roots] must be a table")
    _no_unknown(roots, _ROOT_KEYS, "[roots]")
    digests = _str_list(roots.get("digests", []), "roots.digests")
    for d in digests:
        algo, _, value = d.partition(":")
        if algo != "sha256" or len(value) != 64:
            raise PolicyError(f"roots.digests entry {d!r} is not sha256:<64 hex>")
    raw_signers = data.get("signers", [])
    if not isinstance(raw_signers, list) or not raw_signers:
        raise PolicyError("policy has no [[signers]]: list who may sign which step kinds")
    signers = tuple(_signer(s, base_dir) for s in raw_signers)
    return ChainPolicy(
        allowed_kinds=frozenset(kinds),
        signers=signers,
        root_digests=frozenset(digests),
        root_signers=frozenset(_str_list(roots.get("signers", []), "roots.signers")),
        chain_id=str(data.get("chain", "")),
        require_recheck=bool(data.get("require_recheck", False)),
        not_before=_time(data.get("not_before"), "not_before"),
        not_after=_time(data.get("not_after"), "not_after"),
        trust_config=_path(data.get("trust_config"), base_dir),
        trusted_root=_path(data.get("trusted_root"), base_dir),
    )


def _signer(raw: Any, base_dir: Path) -> PolicySigner:
    if not isinstance(raw, Mapping) or not raw.get("name"):
        raise PolicyError("every [[signers]] entry needs a name")
    name = str(raw["name"])
    _no_unknown(raw, _SIGNER_KEYS, f"signer '{name}'")
    kinds = frozenset(_str_list(raw.get("kinds"), f"signer '{name}' kinds"))
    if not kinds:
        raise PolicyError(f"signer '{name}' has no kinds: say which steps it may sign")
    methods = [k for k in ("public_key", "certificate_chain", "identity") if raw.get(k)]
    if len(methods) != 1:
        raise PolicyError(
            f"signer '{name}' needs exactly one of public_key, certificate_chain or identity"
        )
    if methods[0] == "public_key":
        return PolicySigner(name, kinds, public_key=load_public_key(base_dir / raw["public_key"]))
    if methods[0] == "certificate_chain":
        paths = raw["certificate_chain"]
        paths = [paths] if isinstance(paths, str) else list(paths)
        verifier = CertificateVerifier.from_files([base_dir / p for p in paths])
        return PolicySigner(name, kinds, anchors=verifier.anchors)
    if not raw.get("issuer"):
        raise PolicyError(f"signer '{name}' has an identity but no issuer")
    return PolicySigner(name, kinds, identity=str(raw["identity"]), issuer=str(raw["issuer"]))


def _no_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(table) - allowed
    if extra:
        raise PolicyError(f"{where} has unknown keys {sorted(extra)} (allowed: {sorted(allowed)})")


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where} must be a list of strings")
    return list(value)


def _time(value: Any, where: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PolicyError(f"{where} {value!r} is not an RFC 3339 time") from None
    else:
        raise PolicyError(f"{where} must be a date-time")
    if when.tzinfo is None:
        # A bare date or local time is read as UTC so the window never depends on the host.
        when = when.replace(tzinfo=dt.timezone.utc)
    return when


def _path(value: Any, base_dir: Path) -> Path | None:
    return None if not value else base_dir / str(value)
