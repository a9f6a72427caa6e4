"""GGUF: key-value metadata and tensors, plain or block-quantized (ggml types).

The header is parsed here, in one bounds-checked pass (the ``gguf`` package's reader
trusts declared lengths and builds a numpy view per tokenizer string, which takes seconds
on real models). Shapes in the file are in ggml order (fastest axis first); tensors here
carry the conventional row-major order, so a GGUF ``[4096, 11008]`` weight reads as
``(11008, 4096)`` exactly like the safetensors tensor it came from. A model split by
llama.cpp's gguf-split (``NAME-00001-of-0000N.gguf``) opens as one artifact from its first
file.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        """One GGUF file, or the whole set when ``path`` is the first file of a split
        model (``NAME-00001-of-0000N.gguf`` as llama.cpp's gguf-split writes it)."""
        return _artifact(path, root, read_parts(path, limits))


def read_parts(path: Path, limits: Limits) -> list[GgufPart]:
    """The parsed header of ``path`` and, when it is the first file of a split model, of
    every other file of the set, checked to belong together."""
    parsed = _parse(path, limits)
    count = _int(parsed.metadata.get(SPLIT_COUNT), 1)
    if count <= 1:
        return [parsed]
    index = _int(parsed.metadata.get(SPLIT_NO), 0)
    if index != 0:
        raise MalformedArtifactError(
            path, f"GGUF split {index + 1} of {count}: open the first split file"
        )
    parts = [parsed]
    for i, sibling in enumerate(_split_siblings(path, count)[1:], start=1):
        part = _parse(sibling, limits)
        got_no = _int(part.metadata.get(SPLIT_NO), -1)
        got_count = _int(part.metadata.get(SPLIT_COUNT), -1)
        if got_no != i or got_count != count:
            raise MalformedArtifactError(
                sibling,
                f"declares split {got_no + 1} of {got_count}, expected {i + 1} of {count}",
            )
        parts.append(part)
    declared = _int(parsed.metadata.get(SPLIT_TENSORS), -1)
    total = sum(len(p.tensors) for p in parts)
    if declared >= 0 and declared != total:
        raise MalformedArtifactError(
            path, f"split set declares {declared} tensors, its {count} files hold {total}"
        )
    return parts


SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _split_siblings(path: Path, count: int) -> list[Path]:
    m = _SPLIT_NAME.match(path.name)
    if m is None or int(m["count"]) != count:
        raise MalformedArtifactError(
            path,
            f"declares a split of {count} files but is not named NAME-00001-of-{count:05d}.gguf",
        )
    files = [
        path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]
    for f in files:
        if not f.is_file() or f.is_symlink():
            raise MalformedArtifactError(path, f"split file {f.name} is missing")
    return files


@dataclass
class GgufPart:
    """One GGUF file's parsed header."""

    path: Path
    size: int
    metadata: dict[str, Any]
    tensors: list[tuple[str, str, tuple[int, ...], int, int]]
    """(name, ggml type, row-major shape, absolute data offset, bytes)."""
    version: int
    alignment: int
    entries: list[tuple[str, int, int]]
    """(key, start, end): the bytes of each key-value entry, key and type included."""


def _artifact(path: Path, root: Path, parts: list[GgufPart]) -> Artifact:
    tensors: dict[str, TensorInfo] = {}
    files = []
    for part in parts:
        rel = part.path.relative_to(root).as_posix() if part.path != root else part.path.name
        files.append(FileInfo(rel, part.path, part.size, "weights"))
        for name, qname, shape, offset, nbytes in part.tensors:
            if name in tensors:
                raise MalformedArtifactError(part.path, f"tensor {name!r} appears twice")
            dt = DTYPES[qname]
            tensors[name] = TensorInfo(name, dt, shape, FileSpan(part.path, offset, nbytes), rel)
        _check_overlaps(part.path, {n: tensors[n] for n, *_ in part.tensors})
    metadata: dict[str, Any] = {"gguf": parts[0].metadata}
    if len(parts) > 1:
        metadata["gguf_split"] = {"files": len(parts)}
    return Artifact(path, root, FORMAT, tuple(files), tensors, metadata=metadata)


def _parse(path: Path, limits: Limits) -> GgufPart:
    """Walk the whole GGUF header with bounds checks: every count and length is checked
    against the bytes that remain, so a hostile header is refused instead of truncated
    or looped over."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(24)
        if len(head) < 24:
            raise MalformedArtifactError(path, "GGUF header is truncated")
        if head[:4] != MAGIC:
            raise MalformedArtifactError(path, "not a GGUF file (bad magic)")
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
        # Map rather than read: only the pages the header spans are touched.
        header = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse_header(path, header, size, version, n_tensors, n_kv, limits)
    finally:
        header.close()


def _parse_header(
    path: Path, header: Any, size: int, version: int, n_tensors: int, n_kv: int, limits: Limits
) -> GgufPart:
    walker = _HeaderWalker(path, header, 24, min(size, limits.max_header_bytes + 24), limits)
    metadata: dict[str, Any] = {}
    entries = []
    for _ in range(n_kv):
        begin = walker.pos
        key = walker.string("metadata key")
        if key in metadata:
            raise MalformedArtifactError(path, f"Duplicate key {key!r} in the GGUF metadata")
        metadata[key] = walker.value(walker.u32(f"type of {key!r}"), key, depth=0)
        entries.append((key, begin, walker.pos))
    infos = []
    for _ in range(n_tensors):
        name = walker.string("tensor name")
        n_dims = walker.u32(f"dimension count of tensor {name!r}")
        if n_dims > limits.max_dims:
            raise MalformedArtifactError(path, f"tensor {name!r} claims {n_dims} dimensions")
        dims = [walker.u64(f"shape of tensor {name!r}") for _ in range(n_dims)]
        qtype = walker.u32(f"type of tensor {name!r}")
        offset = walker.u64(f"offset of tensor {name!r}")
        infos.append((name, dims, qtype, offset))
    alignment = _int(metadata.get("general.alignment"), 32)
    if alignment <= 0 or alignment & (alignment - 1):
        raise MalformedArtifactError(path, f"GGUF alignment {alignment} is not a power of two")
    start = walker.pos
    data_start = (start + alignment - 1) // alignment * alignment
    tensors = []
    seen: set[str] = set()
    for name, dims, qtype, offset in infos:
        if name in seen:
            raise MalformedArtifactError(path, f"tensor {name!r} appears twice")
        seen.add(name)
        qname = GGML_TYPES.get(qtype)
        if qname is None or qname not in DTYPES:
            raise MalformedArtifactError(path, f"tensor {name!r} has unknown ggml type {qtype}")
        dt = DTYPES[qname]
        shape = tuple(int(d) for d in reversed(dims))
        n = 1
        for d in shape:
            n *= d
        nbytes = dt.nbytes(n)
        if nbytes < 0:
            raise MalformedArtifactError(
                path, f"tensor {name!r}: shape {shape} does not fit {qname} blocks"
            )
        absolute = data_start + offset
        if absolute + nbytes > size:
            raise MalformedArtifactError(
                path,
                f"tensor {name!r}: data [{absolute}, {absolute + nbytes}) lies outside the "
                f"{size}-byte file",
            )
        tensors.append((name, qname, shape, absolute, nbytes))
    return GgufPart(path, size, metadata, tensors, version, alignment, entries)


_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRUCT = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<B",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_TYPE_NAMES = {
    0: "uint8",
    1: "int8",
    2: "uint16",
    3: "int16",
    4: "uint32",
    5: "int32",
    6: "float32",
    7: "bool",
    8: "string",
    9: "array",
    10: "uint64",
    11: "int64",
    12: "float64",
}
_BOOL, _STRING, _ARRAY = 7, 8, 9
LONG_ARRAY = 64


GGML_TYPES = {
    **{0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1"},
    **{10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K"},
    **{16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S"},
    **{22: "IQ2_S", 23: "IQ4_XS", 29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"},
    **{24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 30: "BF16"},
}
"""ggml type ids (``enum ggml_type``, fixed by the GGUF format) of the types modelseal
reads. Kept here rather than read from ``gguf.GGMLQuantizationType``: importing the
``gguf`` package costs a GGUF command more than parsing the header does."""


class _HeaderWalker:
    def __init__(self, path: Path, data: Any, pos: int, end: int, limits: Limits) -> None:
        self.path, self.data, self.limits = path, data, limits
        self.pos, self.end = pos, end

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            where = self.pos
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

    def _skip_strings(self, count: int, key: str) -> None:
        """Walk ``count`` length-prefixed strings (a tokenizer table) in a tight loop."""
        data, pos, end = self.data, self.pos, self.end
        unpack = struct.Struct("<Q").unpack_from
        limit = self.limits.max_string_bytes
        for _ in range(count):
            if pos + 8 > end:
                break
            (n,) = unpack(data, pos)
            if n > limit:
                raise ResourceLimitError(self.path, f"GGUF string in {key!r} is {n} bytes")
            pos += 8 + n
            if pos > end:
                break
        else:
            self.pos = pos
            return
        self.pos = pos
        self._need(8, f"array {key!r}")

    def value(self, vtype: int, key: str, depth: int) -> Any:
        """Parse one value; arrays longer than :data:`LONG_ARRAY` are walked (bounds
        checked) and summarized, as tokenizer tables are large and not compared."""
        if vtype in _FIXED_SIZES:
            fmt = _STRUCT[vtype]
            self._need(_FIXED_SIZES[vtype], f"value of {key!r}")
            (value,) = struct.unpack_from(fmt, self.data, self.pos)
            self.pos += _FIXED_SIZES[vtype]
            return bool(value) if vtype == _BOOL else value
        if vtype == _STRING:
            return self.string(f"value of {key!r}")
        if vtype == _ARRAY:
            if depth >= 4:
                raise ResourceLimitError(self.path, f"GGUF array {key!r} nests too deeply")
            etype = self.u32(f"element type of {key!r}")
            count = self.u64(f"length of array {key!r}")
            if etype in _FIXED_SIZES:
                nbytes = count * _FIXED_SIZES[etype]
                self._need(nbytes, f"array {key!r} of {count} elements")
                if count > LONG_ARRAY:
                    self.pos += nbytes
                    return {"array_of": _TYPE_NAMES[etype], "length": count}
                fmt = "<" + _STRUCT[etype][1] * count
                values = list(struct.unpack_from(fmt, self.data, self.pos))
                self.pos += nbytes
                return [bool(v) for v in values] if etype == _BOOL else values
            if etype not in (_STRING, _ARRAY):
                raise MalformedArtifactError(
                    self.path, f"GGUF array {key!r} has unknown element type {etype}"
                )
            # Strings and nested arrays take at least 8 bytes each.
            self._need(count * 8, f"array {key!r} of {count} elements")
            if count > LONG_ARRAY and etype == _STRING:
                self._skip_strings(count, key)
                return {"array_of": "string", "length": count}
            items = [self.value(etype, key, depth + 1) for _ in range(count)]
            return (
                items if count <= LONG_ARRAY else {"array_of": _TYPE_NAMES[etype], "length": count}
            )
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
