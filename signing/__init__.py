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

from signing.attest import (
    STEP_PREDICATE_TYPE,
    Attestation,
    CheckResult,
    CheckStatus,
    ClaimChecker,
    ClaimRefusedError,
    StepStatement,
    attest_step,
    read_attestation,
)
from signing.chain import ChainReport, verify_chain
from signing.chain_output import ChainOutputFormat
from signing.chain_output import render as render_chain
from signing.errors import ManifestError, ModelsealError, SigningError, VerificationError
from signing.keys import KeyType
from signing.manifest import MANIFEST_SCHEMA, FileDigest, Manifest, TensorDigest
from signing.model_signature import ModelMismatchError, sign_model, verify_model
from signing.oms import OMS_PREDICATE_TYPE, OmsManifest, hash_model
from signing.policy import ChainPolicy, PolicyError, load_policy
from signing.signers import KeySigner
from signing.sigstore_keyless import IdentityPolicy, KeylessSigner, SigstoreVerifier
from signing.verifiers import CertificateVerifier, PublicKeyVerifier, WrongSignerError

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
