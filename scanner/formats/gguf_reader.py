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
    """Walk the whole GGUF header with bounds checks before the ``gguf`` package parses it.

    The package trusts declared lengths: a string or array length past the end of the
    file is silently truncated or makes it loop for a very long time. Every count and
    length here is checked against the bytes that remain, so such files are refused.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(24)
        if len(head) < 24:
            raise MalformedArtifactError(path, "GGUF header is truncated")
        version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
        if version not in (2, 3):
            raise MalformedArtifactError(path, f"GGUF version {version} is not supported (2 or 3)")
        # Each tensor-info and key-value entry takes at least 8+ bytes in the file.
        if n_tensors > limits.max_tensors or n_tensors * 24 > size:
            raise ResourceLimitError(
                path, f"GGUF claims {n_tensors} tensors, impossible for its size"
            )
        if n_kv * 12 > size:
            raise ResourceLimitError(
                path, f"GGUF claims {n_kv} metadata keys, impossible for its size"
            )
        header = fh.read(min(size, limits.max_header_bytes + 24) - 24)
    walker = _HeaderWalker(path, header, 24, limits)
    for _ in range(n_kv):
        key = walker.string("metadata key")
        walker.value(walker.u32(f"type of {key!r}"), key, depth=0)
    for _ in range(n_tensors):
        name = walker.string("tensor name")
        n_dims = walker.u32(f"dimension count of tensor {name!r}")
        if n_dims > limits.max_dims:
            raise MalformedArtifactError(path, f"tensor {name!r} claims {n_dims} dimensions")
        walker.skip(8 * n_dims + 4 + 8, f"shape of tensor {name!r}")


_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _HeaderWalker:
    def __init__(self, path: Path, data: bytes, base: int, limits: Limits) -> None:
        self.path, self.data, self.base, self.limits = path, data, base, limits
        self.pos = 0

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.data):
            where = self.base + self.pos
            raise MalformedArtifactError(
                self.path,
                f"GGUF {what} at byte {where} runs past the end of the header ({n} bytes claimed)",
            )

    def skip(self, n: int, what: str) -> None:
        self._need(n, what)
        self.pos += n

    def u32(self, what: str) -> int:
        self._need(4, what)
        (value,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self._need(8, what)
        (value,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > self.limits.max_string_bytes:
            raise ResourceLimitError(self.path, f"GGUF {what} is {n} bytes, over the limit")
        self._need(n, what)
        text = self.data[self.pos : self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, vtype: int, key: str, depth: int) -> None:
        if vtype in _FIXED_SIZES:
            self.skip(_FIXED_SIZES[vtype], f"value of {key!r}")
        elif vtype == _STRING:
            self.string(f"value of {key!r}")
        elif vtype == _ARRAY:
            if depth >= 4:
                raise ResourceLimitError(self.path, f"GGUF array {key!r} nests too deeply")
            etype = self.u32(f"element type of {key!r}")
            count = self.u64(f"length of array {key!r}")
            if etype in _FIXED_SIZES:
                self.skip(count * _FIXED_SIZES[etype], f"array {key!r} of {count} elements")
                return
            # Strings and nested arrays take at least 8 bytes each.
            self._need(count * 8, f"array {key!r} of {count} elements")
            for _ in range(count):
                self.value(etype, key, depth + 1)
        else:
            raise MalformedArtifactError(self.path, f"GGUF key {key!r} has unknown type {vtype}")


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
