"""File and tensor digests (defined precisely in docs/digests.md).

A tensor digest depends only on the tensor's dtype, shape and element bytes, never on
the container: the same tensor in safetensors, ONNX and GGUF gets the same digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from scanner.artifact import Artifact, FileSpan, TensorInfo
from scanner.progress import NoProgress, Progress
from signing._hashing import sha256_file, update_from_fd

TENSOR_DIGEST_DOMAIN = b"modelseal.tensor.v1\n"


def tensor_digest_header(info: TensorInfo) -> bytes:
    """The bytes hashed before a tensor's data: domain, dtype and shape, newline-separated."""
    shape = ",".join(str(d) for d in info.shape)
    return TENSOR_DIGEST_DOMAIN + f"{info.dtype.name}\n[{shape}]\n".encode("ascii")


def tensor_digest(artifact: Artifact, name: str, progress: Progress | None = None) -> str:
    progress = progress or NoProgress()
    info = artifact.tensors[name]
    h = hashlib.sha256(tensor_digest_header(info))
    src = info.source
    if isinstance(src, FileSpan) and src.length:
        # Mapped windows, not copies: the hash reads the page cache in place.
        update_from_fd(h, artifact.fd(src.path), src.offset, src.length, progress.advance)
        return "sha256:" + h.hexdigest()
    for chunk in artifact.iter_bytes(name):
        h.update(chunk)
        progress.advance(len(chunk))
    return "sha256:" + h.hexdigest()


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    progress = progress or NoProgress()
    return sha256_file(path, on_bytes=progress.advance)
