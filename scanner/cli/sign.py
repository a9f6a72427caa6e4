"""``modelseal sign``: sign a model as an OMS v1.0 Sigstore bundle."""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*([0-9]+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def byte_size(text: str) -> int:
    """``--shard-size`` value: bytes, or a number with a binary suffix (``256M``, ``1G``,
    ``64KiB``)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (give bytes or a number with K, M, G or T, e.g. 256M)"
        )
    value = int(match[1]) * SIZE_UNITS[match[2].upper()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, not {text}")
    return value


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
            "Hash every file of PATH (files in parallel) and sign the OMS v1.0 in-toto "
            "statement as a Sigstore bundle; --shard-size hashes ranges of each file in "
            "parallel instead. ECDSA and certificate signatures of the default 'files' "
            "serialization verify with `model_signing verify key|certificate`; Ed25519 "
            "ones, and shard signatures, only with modelseal. "
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
        "--shard-size",
        type=byte_size,
        metavar="SIZE",
        help="use the OMS 'shards' serialization: hash every file in ranges of SIZE bytes "
        "(e.g. 256M, 1G) so one large file is hashed on every core. verify reads the "
        "method from the signature and needs no flag; model_signing 1.1.1 cannot verify "
        "shard signatures, so leave this out when consumers use model_signing",
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

    progress = progress_for(args.quiet)
    if args.sigstore:
        signer: Signer | Beside = build_signer(args)
    else:
        # Loading a key imports cryptography and parses the PEM: done beside the hashing,
        # the long part. A key error stops the hashing at its next window (fail fast).
        signer = Beside(lambda: build_signer(args))
        progress = StopWhenFailed(progress, signer)
    ignore = resolve_cli_ignore_paths(args.path, [*args.ignore_paths, args.output])
    tensors = None
    if args.tensors:
        from scanner.manifest import build_manifest

        try:
            tensors = build_manifest(args.path)
        except ModelsealError as exc:
            raise SigningError(f"cannot compute tensor digests of {args.path}: {exc}") from None
    try:
        signed = sign_model(
            args.path,
            signer.result if isinstance(signer, Beside) else signer,
            ignore_paths=ignore,
            ignore_git_paths=args.ignore_git_paths,
            allow_symlinks=args.allow_symlinks,
            tensor_manifest=tensors,
            progress=progress,
            shard_size=args.shard_size,
        )
    except StoppedError:
        assert isinstance(signer, Beside)
        signer.result()  # raises the signer's own error
        raise
    args.output.write_text(signed.bundle, encoding="utf-8")
    if not args.quiet:
        sys.stderr.write(f"{signed_sentence(signed.manifest, 'signed')} -> {args.output}\n")
    return 0


class StoppedError(Exception):
    """Work stopped because the job beside it failed."""


class Beside:
    """One call run on a daemon thread beside the main work; :meth:`result` waits for it
    and returns its value or raises its exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(call,), daemon=True).start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._value = call()
        except BaseException as exc:  # handed to the main thread by result()
            self._error = exc
        finally:
            self._done.set()

    @property
    def failed(self) -> bool:
        return self._done.is_set() and self._error is not None

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class StopWhenFailed:
    """A progress observer that stops the work (raises :class:`StoppedError` in the
    worker reporting progress) once the job beside it has failed."""

    def __init__(self, inner: Any, job: Beside) -> None:
        self._inner, self._job = inner, job

    def start(self, total: int, description: str) -> None:
        self._check()
        self._inner.start(total, description)

    def advance(self, amount: int) -> None:
        self._check()
        self._inner.advance(amount)

    def finish(self) -> None:
        self._inner.finish()

    def _check(self) -> None:
        if self._job.failed:
            raise StoppedError


def signed_sentence(manifest: OmsManifest, verb: str) -> str:
    """``signed 1 file 'model.onnx'`` / ``signed 3 files of 'folder'``, with the digest
    (and, for a shard signature, ``as 8 shards of 256 MiB``)."""
    files = manifest.files()
    if files == (".",):
        what = f"1 file '{manifest.model_name}'"
    else:
        plural = "" if len(files) == 1 else "s"
        what = f"{len(files)} file{plural} of '{manifest.model_name}'"
    if manifest.shard_size is not None:
        count = len(manifest.resources)
        what += f" as {count} shard{'' if count == 1 else 's'} of {_size_text(manifest.shard_size)}"
    return f"{verb} {what} (root sha256 {manifest.root_digest})"


def _size_text(size: int) -> str:
    for unit, factor in reversed(SIZE_UNITS.items()):
        if unit and size % factor == 0:
            return f"{size // factor} {unit}iB"
    return f"{size} bytes"
