"""modelseal's signing half: signatures and attestations over digest manifests.

This package never imports :mod:`scanner`; claim re-checks are passed in as callables.

Public API:

* model signatures (OMS v1.0 compatible): :func:`sign_model`, :func:`verify_model`,
  signers :class:`KeySigner` / :class:`KeylessSigner`, verifiers
  :class:`PublicKeyVerifier`, :class:`CertificateVerifier`, :class:`SigstoreVerifier`;
* step attestations: :func:`attest_step`, :func:`read_attestation`,
  :class:`StepStatement`, :class:`CheckResult`;
* chains: :func:`load_policy`, :func:`verify_chain`, :func:`render_chain`.
"""

from __future__ import annotations

import importlib
from typing import Any

from signing.errors import ManifestError, ModelsealError, SigningError, VerificationError
from signing.manifest import MANIFEST_SCHEMA, FileDigest, Manifest, TensorDigest

# The rest is imported on first use: sigstore and cryptography cost ~0.3 s to import,
# and every scanner command imports signing.errors (hence this package).
_LAZY = {
    "STEP_PREDICATE_TYPE": "signing.attest",
    "Attestation": "signing.attest",
    "CheckResult": "signing.attest",
    "CheckStatus": "signing.attest",
    "ClaimChecker": "signing.attest",
    "ClaimRefusedError": "signing.attest",
    "StepStatement": "signing.attest",
    "attest_step": "signing.attest",
    "read_attestation": "signing.attest",
    "ChainReport": "signing.chain",
    "verify_chain": "signing.chain",
    "ChainOutputFormat": "signing.chain_output",
    "KeyType": "signing.keys",
    "ModelMismatchError": "signing.model_signature",
    "sign_model": "signing.model_signature",
    "verify_model": "signing.model_signature",
    "OMS_PREDICATE_TYPE": "signing.oms",
    "OmsManifest": "signing.oms",
    "hash_model": "signing.oms",
    "ChainPolicy": "signing.chain_policy",
    "PolicyError": "signing.chain_policy",
    "load_policy": "signing.chain_policy",
    "KeySigner": "signing.signers",
    "IdentityPolicy": "signing.sigstore_keyless",
    "KeylessSigner": "signing.sigstore_keyless",
    "SigstoreVerifier": "signing.sigstore_keyless",
    "CertificateVerifier": "signing.verifiers",
    "PublicKeyVerifier": "signing.verifiers",
    "WrongSignerError": "signing.verifiers",
}


def __getattr__(name: str) -> Any:
    if name == "render_chain":
        return importlib.import_module("signing.chain_output").render
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'signing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "MANIFEST_SCHEMA",
    "OMS_PREDICATE_TYPE",
    "STEP_PREDICATE_TYPE",
    "Attestation",
    "CertificateVerifier",
    "ChainOutputFormat",
    "ChainPolicy",
    "ChainReport",
    "CheckResult",
    "CheckStatus",
    "ClaimChecker",
    "ClaimRefusedError",
    "FileDigest",
    "IdentityPolicy",
    "KeySigner",
    "KeyType",
    "KeylessSigner",
    "Manifest",
    "ManifestError",
    "ModelMismatchError",
    "ModelsealError",
    "OmsManifest",
    "PolicyError",
    "PublicKeyVerifier",
    "SigningError",
    "SigstoreVerifier",
    "StepStatement",
    "TensorDigest",
    "VerificationError",
    "WrongSignerError",
    "attest_step",
    "hash_model",
    "load_policy",
    "read_attestation",
    "render_chain",
    "sign_model",
    "verify_chain",
    "verify_model",
]
