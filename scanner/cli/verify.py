"""``modelseal verify``: check a model against an OMS v1.0 signature, offline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from scanner.cli.common import write_text
from scanner.cli.sign import add_hashing_options, signed_sentence
from scanner.errors import UsageError
from signing.errors import VerificationError

if TYPE_CHECKING:
    from signing.manifest import Manifest
    from signing.verifiers import Verifier


def add_verifier_options(parser: argparse.ArgumentParser) -> None:
    """Options naming whom to trust."""
    group = parser.add_argument_group(
        "trusted signer (one of --public-key, --certificate-chain, --identity)"
    )
    group.add_argument(
        "--public-key", type=Path, metavar="PUB.pem", help="trusted public key (ECDSA or Ed25519)"
    )
    group.add_argument(
        "--certificate-chain",
        type=Path,
        nargs="+",
        metavar="CA.pem",
        help="trusted CA certificate(s) for certificate-signed bundles",
    )
    group.add_argument("--identity", help="Sigstore: expected signer identity (certificate SAN)")
    group.add_argument(
        "--identity-provider",
        "--issuer",
        dest="issuer",
        help="Sigstore: expected OIDC issuer of --identity",
    )
    group.add_argument(
        "--trust-config",
        type=Path,
        metavar="FILE",
        help="Sigstore ClientTrustConfig JSON (offline trust root)",
    )
    group.add_argument(
        "--trusted-root",
        type=Path,
        metavar="FILE",
        help="Sigstore TrustedRoot JSON (offline trust root)",
    )


def build_verifier(args: argparse.Namespace) -> Verifier:
    """The verifier the options ask for."""
    chosen = [n for n in ("public_key", "certificate_chain", "identity") if getattr(args, n)]
    if len(chosen) != 1:
        raise UsageError(
            "choose exactly one trusted signer: --public-key, --certificate-chain or "
            "--identity with --identity-provider" + (f" (got {len(chosen)})" if chosen else "")
        )
    if args.public_key:
        from signing.keys import load_public_key
        from signing.verifiers import PublicKeyVerifier

        return PublicKeyVerifier(load_public_key(args.public_key))
    if args.certificate_chain:
        from signing.verifiers import CertificateVerifier

        return CertificateVerifier.from_files(args.certificate_chain)
    if not args.issuer:
        raise UsageError("--identity needs --identity-provider (the OIDC issuer)")
    from signing.sigstore_keyless import SigstoreVerifier, identity_policies, load_trusted_root

    root = load_trusted_root(trust_config=args.trust_config, trusted_root=args.trusted_root)
    return SigstoreVerifier(root, identity_policies([(args.identity, args.issuer)]))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="verify a model against its signature (offline)",
        description=(
            "Check the signature bundle (keys, X.509 chains, or Sigstore keyless against a "
            "supplied trust root with an identity policy), then re-hash PATH and name every "
            "file (and, if signed with --tensors, tensor) that was modified, added or removed."
        ),
        epilog="Exit codes: 0 verified, 1 verification failed, 2 could not complete.",
    )
    parser.add_argument("path", type=Path, help="model folder or file")
    parser.add_argument(
        "--signature",
        type=Path,
        required=True,
        metavar="model.sig",
        help="the Sigstore bundle to check",
    )
    add_verifier_options(parser)
    add_hashing_options(parser)
    output = parser.add_argument_group("output")
    output.add_argument(
        "--format",
        "-f",
        choices=["text", "json"],
        default="text",
        help="text (one sentence) or json (verified, model, root_digest, files, signer; "
        "or verified false and the error); default text",
    )
    output.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the result to FILE, not stdout"
    )
    output.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar and no result on stdout"
    )
    parser.set_defaults(handler=run)


def _tensor_builder(path: Path) -> Manifest:
    from scanner.manifest import build_manifest

    return build_manifest(path)


def run(args: argparse.Namespace) -> int:
    from scanner.cli.progress import progress_for
    from signing.bundle import read_bundle_text
    from signing.model_signature import verify_model
    from signing.oms import resolve_cli_ignore_paths

    verifier = build_verifier(args)
    bundle = read_bundle_text(args.signature)
    ignore = resolve_cli_ignore_paths(args.path, [*args.ignore_paths, args.signature])
    try:
        result = verify_model(
            args.path,
            bundle,
            verifier,
            ignore_paths=ignore,
            ignore_git_paths=args.ignore_git_paths,
            tensor_builder=_tensor_builder,
            source=str(args.signature),
            progress=progress_for(args.quiet),
        )
    except VerificationError as exc:
        if args.format == "json":
            write_text(args, json.dumps({"verified": False, "error": str(exc)}) + "\n")
        raise
    if args.format == "json":
        text = json.dumps(
            {
                "verified": True,
                "model": result.manifest.model_name,
                "root_digest": result.manifest.root_digest,
                "files": len(result.manifest.files()),
                "signer": result.signer.describe(),
            }
        )
    else:
        text = (
            f"{signed_sentence(result.manifest, 'verified:')} signed by {result.signer.describe()}"
        )
    write_text(args, text + "\n")
    return 0
