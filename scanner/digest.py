"""File and tensor digests (defined precisely in docs/digests.md).

A tensor digest depends only on the tensor's dtype, shape and element bytes, never on
the container: the same tensor in safetensors, ONNX and GGUF gets the same digest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from scanner.artifact import STREAM_CHUNK, Artifact, TensorInfo, stream_file_range
from scanner.progress import NoProgress, Progress

TENSOR_DIGEST_DOMAIN = b"modelseal.tensor.v1\n"


def tensor_digest_header(info: TensorInfo) -> bytes:
    """The bytes hashed before a tensor's data: domain, dtype and shape, newline-separated."""
    shape = ",".join(str(d) for d in info.shape)
    return TENSOR_DIGEST_DOMAIN + f"{info.dtype.name}\n[{shape}]\n".encode("ascii")


def tensor_digest(artifact: Artifact, name: str, progress: Progress | None = None) -> str:
    progress = progress or NoProgress()
    info = artifact.tensors[name]
    h = hashlib.sha256(tensor_digest_header(info))
    for chunk in artifact.iter_bytes(name):
        h.update(chunk)
        progress.advance(len(chunk))
    return "sha256:" + h.hexdigest()


def file_sha256(path: Path, progress: Progress | None = None, chunk: int = STREAM_CHUNK) -> str:
    progress = progress or NoProgress()
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for piece in stream_file_range(fd, 0, size, chunk, path):
            h.update(piece)
            progress.advance(len(piece))
    finally:
        os.close(fd)
    return h.hexdigest()
