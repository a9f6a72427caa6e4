"""safetensors: an 8-byte little-endian header length, a JSON header, then tensor bytes.

The header is parsed strictly here rather than trusted to a permissive parser: duplicate
keys (where parsers disagree on which wins), offsets that overlap, leave gaps (which can
hide an appended payload) or run past the file, and spans that do not match
shape x dtype are all errors.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from scanner.artifact import Artifact, FileInfo, FileSpan, TensorInfo
from scanner.dtypes import DTYPES
from scanner.errors import MalformedArtifactError, ResourceLimitError
from scanner.formats.base import Limits

FORMAT = "safetensors"


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(Exception):
    pass


def parse_header(path: Path, limits: Limits) -> tuple[dict[str, Any], int, int]:
    """Return (header dict, data start offset, file size) after size checks."""
    size = os.path.getsize(path)
    if size < 8:
        raise MalformedArtifactError(path, f"safetensors file is truncated ({size} bytes)")
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            raise MalformedArtifactError(
                path,
                f"safetensors header length {header_len} runs past the end of the "
                f"{size}-byte file (truncated or forged)",
            )
        if header_len > limits.max_header_bytes:
            raise ResourceLimitError(
                path,
                f"safetensors header is {header_len} bytes, over the "
                f"{limits.max_header_bytes}-byte limit",
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as dup:
        raise MalformedArtifactError(
            path, f"safetensors header has duplicate key {dup.args[0]!r}"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedArtifactError(path, f"safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedArtifactError(path, "safetensors header is not a JSON object")
    return header, 8 + header_len, size


class SafetensorsReader:
    format = FORMAT

    def sniff(self, head: bytes) -> bool:
        if len(head) < 10:
            return False
        (n,) = struct.unpack("<Q", head[:8])
        return n > 1 and head[8:9] == b"{"

    def open(self, path: Path, root: Path, limits: Limits) -> Artifact:
        relpath = path.relative_to(root).as_posix() if path != root else path.name
        tensors, metadata = read_tensors(path, relpath, limits)
        files = (FileInfo(relpath, path, os.path.getsize(path), "weights"),)
        return Artifact(path, root, FORMAT, files, tensors, metadata={"safetensors": metadata})


def read_tensors(
    path: Path, relpath: str, limits: Limits
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    header, data_start, size = parse_header(path, limits)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise MalformedArtifactError(path, "safetensors __metadata__ must map strings to strings")
    if len(header) > limits.max_tensors:
        raise ResourceLimitError(
            path, f"{len(header)} tensors exceed the limit of {limits.max_tensors}"
        )
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, TensorInfo] = {}
    data_len = size - data_start
    for name, entry in header.items():
        info = _tensor_entry(path, relpath, name, entry, data_start, data_len, limits)
        tensors[name] = info
        spans.append((info.source.offset - data_start, info.source.length, name))
    _check_layout(path, spans, data_len)
    return tensors, metadata


def _tensor_entry(
    path: Path,
    relpath: str,
    name: str,
    entry: Any,
    data_start: int,
    data_len: int,
    limits: Limits,
) -> TensorInfo:
    if not isinstance(entry, dict):
        raise MalformedArtifactError(path, f"tensor {name!r}: header entry is not an object")
    dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    unknown = set(entry) - {"dtype", "shape", "data_offsets"}
    if unknown:
        raise MalformedArtifactError(
            path, f"tensor {name!r}: unknown header keys {sorted(unknown)}"
        )
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise MalformedArtifactError(path, f"tensor {name!r}: unknown dtype {dtype_name!r}")
    dt = DTYPES[dtype_name]
    if dt.is_block_quantized:
        raise MalformedArtifactError(
            path, f"tensor {name!r}: dtype {dtype_name} is not a safetensors dtype"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > limits.max_dims
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise MalformedArtifactError(
            path, f"tensor {name!r}: shape {shape!r} is not a list of sizes"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise MalformedArtifactError(
            path, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]"
        )
    begin, end = offsets
    if begin < 0 or end < begin or end > data_len:
        raise MalformedArtifactError(
            path,
            f"tensor {name!r}: data_offsets [{begin}, {end}] fall outside the "
            f"{data_len}-byte data section",
        )
    n = 1
    for d in shape:
        n *= d
    expected = dt.nbytes(n)
    if expected != end - begin:
        raise MalformedArtifactError(
            path,
            f"tensor {name!r}: shape {shape} x {dtype_name} needs {expected} bytes "
            f"but data_offsets span {end - begin}",
        )
    return TensorInfo(
        name=name,
        dtype=dt,
        shape=tuple(shape),
        source=FileSpan(path, data_start + begin, end - begin),
        file=relpath,
    )


def _check_layout(path: Path, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """Tensor spans must tile the data section exactly: no overlap, no gap, no tail."""
    pos, prev = 0, None
    for begin, length, name in sorted(spans):
        if begin < pos:
            raise MalformedArtifactError(
                path, f"tensor {name!r} overlaps tensor {prev!r} at data offset {begin}"
            )
        if begin > pos:
            raise MalformedArtifactError(
                path,
                f"{begin - pos} unreferenced bytes before tensor {name!r} at data offset {pos} "
                "(a gap can hide a payload)",
            )
        pos, prev = begin + length, name
    if pos != data_len:
        raise MalformedArtifactError(
            path,
            f"{data_len - pos} bytes after the last tensor are not referenced by the header "
            "(truncated header or appended data)",
        )
