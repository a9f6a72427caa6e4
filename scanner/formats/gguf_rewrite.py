"""Write a GGUF copy with some tensors or string metadata replaced, streamed.

Every other key-value entry is copied byte for byte as it lies in the source header, and
every other tensor's stored bytes are copied in bounded chunks: the copy keeps the
source's metadata exactly (float formatting, array element types, key order), a 7B model
never sits in memory, and the tokenizer tables are never decoded (the ``gguf`` package's
reader builds a numpy view per vocabulary string, seconds per file, and its writer holds
every tensor until it writes). A split model (``NAME-00001-of-0000N.gguf``) is written as
one file, without its ``split.*`` keys.

The header written is GGUF's own layout: magic, version, tensor and key-value counts, the
key-value entries, one info per tensor (name, ggml dimensions, type, offset from the data
start), then the data, each tensor starting on the file's ``general.alignment``.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from scanner.dtypes import DTYPES
from scanner.errors import UsageError
from scanner.formats.base import DEFAULT_LIMITS, Limits
from scanner.formats.gguf_reader import (
    GGML_TYPES,
    MAGIC,
    SPLIT_COUNT,
    SPLIT_NO,
    SPLIT_TENSORS,
    read_parts,
)

_SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS)
_STRING = 8
_COPY_CHUNK = 8 << 20


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as GGUF stores it: its ggml type name, row-major shape and raw bytes."""

    ggml_type: str
    shape: tuple[int, ...]
    data: bytes


def stored(values: np.ndarray) -> StoredTensor:
    """A plain (non-block) numpy array as a GGUF tensor of the matching ggml type."""
    arr = np.ascontiguousarray(values)
    by_numpy = {d.numpy_name: d.name for d in DTYPES.values() if d.numpy_name}
    name = "BF16" if arr.dtype.name == "bfloat16" else by_numpy.get(arr.dtype.str)
    if name is None or name not in _ggml_types():
        raise UsageError(f"GGUF has no tensor type for numpy {arr.dtype.name} values")
    return StoredTensor(name, tuple(arr.shape), arr.tobytes())


def rewrite_gguf(
    src: Path,
    out: Path,
    *,
    tensors: Mapping[str, StoredTensor] | None = None,
    strings: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Write ``src`` (a GGUF file, or the first file of a split set) to ``out`` with the
    ``tensors`` named replaced (in place, or appended when new) and the ``strings``
    metadata keys set (replacing an entry of any type, or appended)."""
    tensors = dict(tensors or {})
    strings = dict(strings or {})
    if Path(out).resolve() == Path(src).resolve():
        raise UsageError(f"{out}: the GGUF copy would overwrite its source")
    parts = read_parts(Path(src), limits)
    first = parts[0]
    entries = [
        (key, start, end)
        for key, start, end in first.entries
        if key not in strings and key not in _SPLIT_KEYS
    ]
    infos: list[tuple[str, str, tuple[int, ...], int]] = []
    sources: list[tuple[Path, int, int] | StoredTensor] = []
    for part in parts:
        for name, qname, shape, offset, nbytes in part.tensors:
            new = tensors.pop(name, None)
            if new is None:
                infos.append((name, qname, shape, nbytes))
                sources.append((part.path, offset, nbytes))
            else:
                infos.append((name, new.ggml_type, new.shape, _checked_size(name, new)))
                sources.append(new)
    for name, new in tensors.items():
        infos.append((name, new.ggml_type, new.shape, _checked_size(name, new)))
        sources.append(new)

    align = first.alignment
    with open(out, "wb") as fh:
        fh.write(
            MAGIC + struct.pack("<IQQ", first.version, len(infos), len(entries) + len(strings))
        )
        with open(first.path, "rb") as head_fh:
            header = mmap.mmap(head_fh.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                for _key, start, end in entries:
                    fh.write(header[start:end])
            finally:
                header.close()
        for key, text in strings.items():
            fh.write(_string(key) + struct.pack("<I", _STRING) + _string(text))
        offset = 0
        for name, qname, shape, nbytes in infos:
            dims = tuple(reversed(shape)) or (1,)
            fh.write(
                _string(name)
                + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, _ggml_types()[qname], offset)
            )
            offset = _aligned(offset + nbytes, align)
        fh.write(b"\0" * (_aligned(fh.tell(), align) - fh.tell()))
        with ExitStack() as stack:
            files = {part.path: stack.enter_context(open(part.path, "rb")) for part in parts}
            for (_name, _qname, _shape, nbytes), source in zip(infos, sources, strict=True):
                if isinstance(source, StoredTensor):
                    fh.write(source.data)
                else:
                    _copy_range(files[source[0]], source[0], source[1], nbytes, fh)
                fh.write(b"\0" * (_aligned(nbytes, align) - nbytes))


def _checked_size(name: str, new: StoredTensor) -> int:
    dtype = DTYPES.get(new.ggml_type)
    if dtype is None or new.ggml_type not in _ggml_types():
        raise UsageError(f"tensor {name!r}: {new.ggml_type} is not a ggml type")
    n = 1
    for d in new.shape:
        n *= d
    if dtype.nbytes(n) != len(new.data):
        raise UsageError(
            f"tensor {name!r}: {len(new.data)} bytes given, {new.ggml_type} {new.shape} "
            f"takes {dtype.nbytes(n)}"
        )
    return len(new.data)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _aligned(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _copy_range(src: BinaryIO, path: Path, offset: int, length: int, out: BinaryIO) -> None:
    src.seek(offset)
    while length > 0:
        chunk = src.read(min(length, _COPY_CHUNK))
        if not chunk:
            raise UsageError(f"{path}: ends inside a tensor it declares")
        out.write(chunk)
        length -= len(chunk)


@functools.cache
def _ggml_types() -> dict[str, int]:
    return {name: number for number, name in GGML_TYPES.items()}
