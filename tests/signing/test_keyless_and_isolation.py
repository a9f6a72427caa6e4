"""Keyless signing up to the network boundary, and the signing/scanner layering rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sigstore.sign import SigningContext

from signing.errors import SigningError
from signing.sigstore_keyless import KeylessSigner, load_trust_config

REPO = Path(__file__).resolve().parents[2]
_CI_TOKEN_VARS = (
    "GITHUB_ACTIONS",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "SIGSTORE_ID_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_NAME",
    "BUILDKITE",
    "GITLAB_CI",
    "CIRCLECI",
)


def _offline_signer(vectors: Path, token: str | None = None) -> KeylessSigner:
    return KeylessSigner(load_trust_config(vectors / "custom_trust_config.json"), token)


def test_signing_context_is_built_from_the_trust_config(vectors: Path) -> None:
    context = _offline_signer(vectors).signing_context()
    assert isinstance(context, SigningContext)


def test_missing_identity_token_is_a_clear_error(vectors: Path, monkeypatch) -> None:
    for var in _CI_TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SigningError, match="no OIDC identity token for keyless signing"):
        _offline_signer(vectors).sign(
            b'{"_type": "https://in-toto.io/Statement/v1", '
            b'"subject": [{"name": "m", "digest": {"sha256": "'
            + b"0"
            * 64
            + b'"}}], "predicateType": "x", '
            b'"predicate": {}}'
        )


def test_malformed_identity_token_is_rejected_before_any_network(vectors: Path) -> None:
    signer = _offline_signer(vectors, token="not-a-jwt")
    with pytest.raises(SigningError, match="OIDC identity token is not usable"):
        signer.resolve_token()


def test_keyless_signs_only_in_toto(vectors: Path) -> None:
    with pytest.raises(SigningError, match="only signs in-toto"):
        _offline_signer(vectors, "x").sign(b"{}", "text/plain")


def test_signing_never_imports_scanner() -> None:
    code = (
        "import sys, signing, signing.attest, signing.chain, signing.chain_output, "
        "signing.chain_policy, signing.model_signature, signing.sigstore_keyless, signing.oms\n"
        "bad = sorted(m for m in sys.modules if m == 'scanner' or m.startswith('scanner.'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
