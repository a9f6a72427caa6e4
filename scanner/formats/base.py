"""The reader interface, resource limits, and path-safety helpers shared by readers."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from scanner.artifact import Artifact
from scanner.errors import UnsafePathError

SNIFF_BYTES = 64


@dataclass(frozen=True)
class Limits:
    """Caps on what one artifact may ask of the reader; exceeded caps are errors."""

    max_header_bytes: int = 100 << 20
    """Largest safetensors JSON header / GGUF metadata block accepted."""
    max_tensors: int = 1_000_000
    max_dims: int = 16
    max_string_bytes: int = 16 << 20
    max_files: int = 100_000


DEFAULT_LIMITS = Limits()


class Reader(Protocol):
    """One artifact format. ``sniff`` decides from content, never from the file name."""

    format: str

    def sniff(self, head: bytes) -> bool:
        """Whether the first :data:`SNIFF_BYTES` bytes of a file look like this format."""
        ...

    def open(self, path: Path, root: Path, limits: Limits) -> Artifact:
        """Parse ``path`` (a file inside ``root``) fully and validate it, or raise
        :class:`scanner.errors.MalformedArtifactError`."""
        ...


def read_head(path: Path, n: int = SNIFF_BYTES) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def resolve_inside(root: Path, reference: str, what: str, artifact: Path) -> Path:
    """Resolve ``reference`` (a relative path named inside an artifact) under ``root``.

    Rejects absolute paths, ``..`` components, symlinks whose target leaves ``root``,
    and hard-linked files (a hard link can alias any file on the same filesystem).
    """
    if not reference:
        raise UnsafePathError(artifact, f"{what} has an empty location")
    if "\x00" in reference:
        raise UnsafePathError(artifact, f"{what} location contains a NUL byte")
    normalized = reference.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise UnsafePathError(artifact, f"{what} location {reference!r} is an absolute path")
    if ".." in normalized.split("/"):
        raise UnsafePathError(artifact, f"{what} location {reference!r} climbs out with '..'")
    real_root = root.resolve()
    candidate = real_root / normalized
    real = candidate.resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(
            artifact, f"{what} location {reference!r} resolves outside the model folder"
        )
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise UnsafePathError(artifact, f"{what} location {reference!r} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(artifact, f"{what} location {reference!r} is not a regular file")
    if st.st_nlink > 1:
        raise UnsafePathError(
            artifact, f"{what} location {reference!r} is a hard link; copy the file instead"
        )
    return real
