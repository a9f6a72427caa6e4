"""``modelseal sign``: sign a model as an OMS v1.0 Sigstore bundle."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scanner.errors import UsageError
from signing.errors import ModelsealError, SigningError

if TYPE_CHECKING:
    from signing.oms import OmsManifest
    from signing.signers import Signer


def add_signer_options(parser: argparse.ArgumentParser) -> None:
    """Options choosing how to sign: a key (optionally certified) or Sigstore keyless."""
    group = parser.add_argument_group("signer (one of --key or --sigstore)")
    group.add_argument(
        "--key",
        type=Path,
        metavar="KEY.pem",
        help="PEM private key: ECDSA P-256/P-384 (verifiable by model_signing) "
        "or Ed25519 (modelseal only)",
    )
    group.add_argument(
        "--password-env",
        metavar="VAR",
        help="environment variable holding the private key's password",
    )
    group.add_argument(
        "--certificate",
        type=Path,
        metavar="LEAF.pem",
        help="sign with an X.509 certificate: the leaf certifying --key",
    )
    group.add_argument(
        "--certificate-chain",
        type=Path,
        nargs="+",
        default=[],
        metavar="CERT.pem",
        help="intermediate certificates to embed",
    )
    group.add_argument(
        "--sigstore",
        action="store_true",
        help="Sigstore keyless signing (CI with ambient OIDC credentials)",
    )
    group.add_argument(
        "--identity-token",
        metavar="JWT",
        help="explicit OIDC token for --sigstore (default: detect CI credentials)",
    )
    group.add_argument(
        "--trust-config",
        type=Path,
        metavar="FILE",
        help="Sigstore ClientTrustConfig for --sigstore (default: production)",
    )
    group.add_argument(
        "--staging", action="store_true", help="use Sigstore staging with --sigstore (testing only)"
    )


def build_signer(args: argparse.Namespace) -> Signer:
    """The signer the options ask for."""
    if bool(args.key) == bool(args.sigstore):
        raise UsageError("choose exactly one signer: --key KEY.pem or --sigstore")
    if args.sigstore:
        from signing.sigstore_keyless import KeylessSigner  # sigstore is slow to import

        return KeylessSigner.create(
            trust_config=args.trust_config, staging=args.staging, identity_token=args.identity_token
        )
    password = None
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise SigningError(f"environment variable {args.password_env} is not set")
        password = value.encode()
    from signing.signers import KeySigner

    return KeySigner.from_files(
        args.key, password=password, certificate=args.certificate, chain=args.certificate_chain
    )


def add_hashing_options(parser: argparse.ArgumentParser) -> None:
    """Ignore rules shared with model_signing."""
    parser.add_argument(
        "--ignore-paths",
        type=Path,
        nargs="+",
        default=[],
        metavar="PATH",
        help="files or folders to leave out (relative to the working "
        "directory, as in model_signing)",
    )
    parser.add_argument(
        "--no-ignore-git-paths",
        dest="ignore_git_paths",
        action="store_false",
        help="also sign .git, .github, .gitattributes, .gitignore",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sign",
        help="sign a model (OpenSSF model signing v1.0 bundle)",
        description=(
            "Hash every file of PATH (both cores) and sign the OMS v1.0 in-toto statement as "
            "a Sigstore bundle. ECDSA and certificate signatures verify with "
            "`model_signing verify key|certificate`; Ed25519 ones only with modelseal. "
            "See docs/signing.md."
        ),
        epilog="Exit codes: 0 signed, 2 could not complete.",
    )
    parser.add_argument("path", type=Path, help="model folder or file")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("model.sig"),
        metavar="model.sig",
        help="where to write the bundle (default model.sig)",
    )
    add_signer_options(parser)
    add_hashing_options(parser)
    parser.add_argument(
        "--allow-symlinks",
        action="store_true",
        help="hash the targets of symbolic links instead of refusing them",
    )
    parser.add_argument(
        "--tensors",
        action="store_true",
        help="also record per-tensor digests so verification can name the "
        "tensor that changed (reads every tensor once more)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scanner.cli.progress import progress_for
    from signing.model_signature import sign_model
    from signing.oms import resolve_cli_ignore_paths

    signer = build_signer(args)
    ignore = resolve_cli_ignore_paths(args.path, [*args.ignore_paths, args.output])
    tensors = None
    if args.tensors:
        from scanner.manifest import build_manifest

        try:
            tensors = build_manifest(args.path)
        except ModelsealError as exc:
            raise SigningError(f"cannot compute tensor digests of {args.path}: {exc}") from None
    signed = sign_model(
        args.path,
        signer,
        ignore_paths=ignore,
        ignore_git_paths=args.ignore_git_paths,
        allow_symlinks=args.allow_symlinks,
        tensor_manifest=tensors,
        progress=progress_for(args.quiet),
    )
    args.output.write_text(signed.bundle, encoding="utf-8")
    if not args.quiet:
        sys.stderr.write(f"{signed_sentence(signed.manifest, 'signed')} -> {args.output}\n")
    return 0


def signed_sentence(manifest: OmsManifest, verb: str) -> str:
    """``signed 1 file 'model.onnx'`` / ``signed 3 files of 'folder'``, with the digest."""
    resources = manifest.resources
    if len(resources) == 1 and resources[0].name == ".":
        what = f"1 file '{manifest.model_name}'"
    else:
        plural = "" if len(resources) == 1 else "s"
        what = f"{len(resources)} file{plural} of '{manifest.model_name}'"
    return f"{verb} {what} (root sha256 {manifest.root_digest})"
