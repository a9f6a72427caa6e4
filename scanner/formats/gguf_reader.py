"""GGUF: key-value metadata and tensors, plain or block-quantized (ggml types).

Parsing is done by the ``gguf`` package. Its shapes are in ggml order (fastest axis
first); tensors here carry the conventional row-major order, so a GGUF ``[4096, 11008]``
weight reads as ``(11008, 4096)`` exactly like the safetensors tensor it came from.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from scanner.artifact import Artifact, FileInfo, FileSpan, TensorInfo
from scanner.dtypes import DTYPES
from scanner.errors import MalformedArtifactError, ResourceLimitError
from scanner.formats.base import Limits

FORMAT = "gguf"
MAGIC = b"GGUF"


class GgufReader:
    format = FORMAT

    def sniff(self, head: bytes) -> bool:
        return head[:4] == MAGIC

    def open(self, path: Path, root: Path, limits: Limits) -> Artifact:
        _precheck(path, limits)
        from gguf import GGUFReader

        try:
            reader = GGUFReader(str(path), "r")
        except (KeyError, ValueError, IndexError, TypeError, OverflowError, struct.error) as exc:
            raise MalformedArtifactError(path, f"GGUF is malformed: {exc}") from None
        except MemoryError:
            raise ResourceLimitError(path, "GGUF declares sizes too large to read") from None
        relpath = path.relative_to(root).as_posix() if path != root else path.name
        size = os.path.getsize(path)
        tensors: dict[str, TensorInfo] = {}
        for t in reader.tensors:
            qname = t.tensor_type.name
            if qname not in DTYPES:
                raise MalformedArtifactError(
                    path, f"tensor {t.name!r} has unknown ggml type {qname}"
                )
            dt = DTYPES[qname]
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            if len(shape) > limits.max_dims:
                raise MalformedArtifactError(path, f"tensor {t.name!r} has {len(shape)} dims")
            n = 1
            for d in shape:
                n *= d
            nbytes = dt.nbytes(n)
            if nbytes < 0 or nbytes != int(t.n_bytes):
                raise MalformedArtifactError(
                    path, f"tensor {t.name!r}: shape {shape} does not fit {qname} blocks"
                )
            offset = int(t.data_offset)
            if offset < 0 or offset + nbytes > size:
                raise MalformedArtifactError(
                    path,
                    f"tensor {t.name!r}: data [{offset}, {offset + nbytes}) lies outside the "
                    f"{size}-byte file",
                )
            tensors[t.name] = TensorInfo(t.name, dt, shape, FileSpan(path, offset, nbytes), relpath)
        _check_overlaps(path, tensors)
        metadata = {name: _field_value(f) for name, f in reader.fields.items()}
        del reader  # drop the package's whole-file memmap; we map tensors lazily
        files = (FileInfo(relpath, path, size, "weights"),)
        return Artifact(path, root, FORMAT, files, tensors, metadata={"gguf": metadata})


def _precheck(path: Path, limits: Limits) -> None:
    """Reject absurd counts before the ``gguf`` package allocates for them."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24:
        raise MalformedArtifactError(path, "GGUF header is truncated")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        raise MalformedArtifactError(path, f"GGUF version {version} is not supported (2 or 3)")
    size = os.path.getsize(path)
    # Each tensor-info and key-value entry takes at least 8+ bytes in the file.
    if n_tensors > limits.max_tensors or n_tensors * 24 > size:
        raise ResourceLimitError(path, f"GGUF claims {n_tensors} tensors, impossible for its size")
    if n_kv * 12 > size:
        raise ResourceLimitError(path, f"GGUF claims {n_kv} metadata keys, impossible for its size")


def _check_overlaps(path: Path, tensors: dict[str, TensorInfo]) -> None:
    spans = sorted(
        (t.source.offset, t.source.length, t.name)
        for t in tensors.values()
        if isinstance(t.source, FileSpan)
    )
    end, prev = -1, ""
    for offset, length, name in spans:
        if offset < end:
            raise MalformedArtifactError(path, f"tensor {name!r} overlaps tensor {prev!r}")
        end, prev = offset + length, name


def _field_value(field: Any) -> Any:
    """A JSON-friendly value of a GGUF metadata field (long arrays summarized)."""
    from gguf import GGUFValueType

    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        n = len(field.data)
        if n > 64:
            return {"array_of": types[-1].name.lower(), "length": n}
        return [_scalar(field, idx, types[-1]) for idx in field.data]
    return _scalar(field, field.data[0], types[0])


def _scalar(field: Any, idx: int, vtype: Any) -> Any:
    from gguf import GGUFValueType

    part = field.parts[idx]
    if vtype == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    value = np.asarray(part).reshape(-1)[0]
    return value.item()
