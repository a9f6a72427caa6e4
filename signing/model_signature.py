"""Sign a model and verify a model against its signature (OMS v1.0 compatible).

The signed statement is exactly what ``model_signing`` produces for its "files"
serialization (the default) or, opt-in, its "shards" serialization (see
:mod:`signing.oms` for the one deliberate difference: empty files). When a tensor
manifest is supplied, modelseal adds its per-tensor digests under
``predicate.modelseal`` (OMS v1.0 verifiers ignore unknown predicate fields), so a
failed verification can name the tensor that changed, not just the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signing.bundle import parse_bundle
from signing.dsse import IN_TOTO_PAYLOAD_TYPE
from signing.errors import ModelsealError, VerificationError
from signing.manifest import Manifest
from signing.oms import Discrepancy, OmsManifest, compare, hash_model

if TYPE_CHECKING:
    # Type names only: signers and verifiers import cryptography, which the sign command
    # loads beside the hashing rather than before it.
    from signing.signers import Signer
    from signing.verifiers import SignerIdentity, Verifier

TensorManifestBuilder = Callable[[Path], Manifest]
"""Computes the per-tensor manifest of a model (the scanner provides one)."""


class ModelMismatchError(VerificationError):
    """The signature is valid but the model on disk is not what was signed."""

    def __init__(self, model: str, discrepancies: tuple[Discrepancy, ...]) -> None:
        self.discrepancies = discrepancies
        shown = "; ".join(d.describe() for d in discrepancies[:8])
        more = f"; and {len(discrepancies) - 8} more" if len(discrepancies) > 8 else ""
        super().__init__(f"model '{model}' does not match its signature: {shown}{more}")


@dataclass(frozen=True)
class SignedModel:
    """Result of :func:`sign_model`."""

    bundle: str
    manifest: OmsManifest


@dataclass(frozen=True)
class VerifiedModel:
    """Result of a successful :func:`verify_model`."""

    manifest: OmsManifest
    signer: SignerIdentity


def _tensor_extension(manifest: Manifest) -> dict[str, object]:
    return {
        "manifest_digest": manifest.root_digest,
        "format": manifest.format,
        "tensors": [{"name": t.name, "file": t.file, "digest": t.digest} for t in manifest.tensors],
    }


def sign_model(
    model_path: Path,
    signer: Signer | Callable[[], Signer],
    *,
    ignore_paths: Iterable[str | os.PathLike[str]] = (),
    ignore_git_paths: bool = True,
    allow_symlinks: bool = False,
    tensor_manifest: Manifest | None = None,
    workers: int | None = None,
    progress: Any = None,
    shard_size: int | None = None,
) -> SignedModel:
    """Hash ``model_path`` the OMS way and sign the statement with ``signer``.

    ``ignore_paths`` are relative to the model root (include the signature file if it
    is written inside the model). ``signer`` may be a function returning the signer:
    it is called once the model is hashed (a signer still loading beside the hashing).
    ``shard_size`` (bytes) selects the OMS "shards" serialization, which hashes one large
    file on every core; ``model_signing`` 1.1 cannot verify such signatures.
    """
    extensions = _tensor_extension(tensor_manifest) if tensor_manifest else None
    manifest = hash_model(
        Path(model_path),
        ignore_paths=ignore_paths,
        ignore_git_paths=ignore_git_paths,
        allow_symlinks=allow_symlinks,
        workers=workers,
        extensions=extensions,
        progress=progress,
        shard_size=shard_size,
    )
    if not hasattr(signer, "sign"):
        signer = signer()  # type: ignore[operator]
    return SignedModel(signer.sign(manifest.to_payload(), IN_TOTO_PAYLOAD_TYPE), manifest)


def read_signed_manifest(
    bundle_text: str, verifier: Verifier, source: str = "signature"
) -> tuple[OmsManifest, SignerIdentity]:
    """Verify the bundle's signature and return the signed OMS manifest."""
    verified = verifier.verify(parse_bundle(bundle_text, source))
    if verified.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise VerificationError(
            f"{source} signs a {verified.payload_type!r} payload, not an in-toto statement"
        )
    try:
        statement = json.loads(verified.payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{source} payload is not JSON: {exc}") from None
    if not isinstance(statement, dict):
        raise VerificationError(f"{source} payload is not a JSON object")
    return OmsManifest.from_statement(statement), verified.signer


def verify_model(
    model_path: Path,
    bundle_text: str,
    verifier: Verifier,
    *,
    ignore_paths: Iterable[str | os.PathLike[str]] = (),
    ignore_git_paths: bool = True,
    tensor_builder: TensorManifestBuilder | None = None,
    workers: int | None = None,
    source: str = "signature",
    progress: Any = None,
) -> VerifiedModel:
    """Check the signature, then that every file on disk matches what was signed.

    Ignore rules are the caller's ``ignore_paths`` plus those recorded in the signed
    statement (as OMS does); the model is hashed with the signed serialization method
    and shard size. Raises :class:`ModelMismatchError` naming every modified,
    added or missing file and, where tensor digests were signed and ``tensor_builder``
    is given, every changed tensor.
    """
    expected, signer = read_signed_manifest(bundle_text, verifier, source)
    model_path = Path(model_path)
    ignore = [*ignore_paths, *expected.ignore_paths]
    actual = hash_model(
        model_path,
        ignore_paths=ignore,
        ignore_git_paths=ignore_git_paths,
        allow_symlinks=expected.allow_symlinks,
        workers=workers,
        progress=progress,
        shard_size=expected.shard_size,
    )
    problems = compare(expected, actual)
    if model_path.is_file():
        # OMS names a single file's one resource "."; messages name the file instead.
        problems = tuple(
            dataclasses.replace(d, name=model_path.name) if d.name == "." else d for d in problems
        )
    if problems:
        tensors = _tensor_discrepancies(expected, model_path, tensor_builder, problems)
        raise ModelMismatchError(expected.model_name or actual.model_name, problems + tensors)
    return VerifiedModel(expected, signer)


def _tensor_discrepancies(
    expected: OmsManifest,
    model_path: Path,
    builder: TensorManifestBuilder | None,
    problems: tuple[Discrepancy, ...],
) -> tuple[Discrepancy, ...]:
    signed = expected.extensions.get("tensors")
    if builder is None or not signed or not any(p.kind == "modified" for p in problems):
        return ()
    try:
        actual = builder(model_path)
    except ModelsealError:
        # The file-level result already fails verification; tensor detail is a bonus.
        return ()
    want = {str(t["name"]): str(t["digest"]) for t in signed if isinstance(t, dict)}
    have = {t.name: t.digest for t in actual.tensors}
    out = []
    for name in sorted(set(want) | set(have)):
        if name not in have:
            out.append(Discrepancy("tensor-missing", name, expected=want[name]))
        elif name not in want:
            out.append(Discrepancy("tensor-added", name, actual=have[name]))
        elif want[name] != have[name]:
            out.append(
                Discrepancy(
                    "tensor-modified",
                    name,
                    expected=want[name].removeprefix("sha256:"),
                    actual=have[name].removeprefix("sha256:"),
                )
            )
    return tuple(out)
