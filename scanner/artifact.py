"""One in-memory description of a model artifact, whatever its container format.

Readers (``scanner.formats``) build an :class:`Artifact`: the files it consists of, a
:class:`TensorInfo` per tensor (name, dtype, shape and where its bytes live), the graph
when the format has one, and metadata. Tensor bytes are not read until asked for:
:meth:`Artifact.raw` gives a zero-copy, mmap-backed view for random access, and
:meth:`Artifact.iter_bytes` streams a tensor through one reusable buffer, which keeps
resident memory flat on models far larger than RAM.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanner.dtypes import DType
from scanner.errors import ArtifactError

if TYPE_CHECKING:  # numpy is imported where tensor values are used: hashing needs none
    import numpy as np

STREAM_CHUNK = 8 << 20


@dataclass(frozen=True)
class FileSpan:
    """Bytes ``[offset, offset + length)`` of a file inside the artifact."""

    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class InlineBytes:
    """Bytes held in memory (e.g. an ONNX initializer stored inside the protobuf)."""

    data: bytes = field(repr=False)

    @property
    def length(self) -> int:
        return len(self.data)


TensorSource = FileSpan | InlineBytes


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's description; its bytes are the little-endian, row-major elements
    (or, for block-quantized dtypes, the ggml blocks) in the order of ``shape``."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    source: TensorSource = field(repr=False)
    file: str = ""
    """Path, relative to the artifact root, of the file that holds the tensor."""

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.source.length


@dataclass(frozen=True)
class FileInfo:
    """One regular file of the artifact."""

    relpath: str
    path: Path
    size: int
    role: str
    """``weights`` for a file a reader parsed, ``other`` for config, tokenizer, etc."""


@dataclass(frozen=True)
class GraphNode:
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scope: str = ""
    """Where the node lives: ``""`` for the main graph, ``node/attr`` for subgraphs,
    ``function:domain:name`` for model-local functions."""


@dataclass(frozen=True)
class Graph:
    """A computation graph (ONNX). ``model`` is the parsed ``onnx.ModelProto`` without
    external tensor bytes; ``nodes`` is every node, subgraphs and functions included."""

    nodes: tuple[GraphNode, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    opsets: Mapping[str, int]
    model: Any = field(repr=False, compare=False)


class Artifact:
    """A model artifact opened for reading. Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        path: Path,
        root: Path,
        fmt: str,
        files: tuple[FileInfo, ...],
        tensors: Mapping[str, TensorInfo],
        graph: Graph | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.root = root
        self.format = fmt
        self.files = files
        self.tensors: Mapping[str, TensorInfo] = dict(tensors)
        self.graph = graph
        self.metadata: Mapping[str, Any] = dict(metadata or {})
        self._maps: dict[Path, mmap.mmap] = {}
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for m in self._maps.values():
                # A caller may still hold a view; the map is then freed with that view.
                with contextlib.suppress(BufferError):
                    m.close()
            self._maps.clear()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    @property
    def total_tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    # -- byte access -----------------------------------------------------------------
    def _map(self, path: Path) -> mmap.mmap:
        with self._lock:
            m = self._maps.get(path)
            if m is None:
                with open(path, "rb") as fh:
                    m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                self._maps[path] = m
            return m

    def fd(self, path: Path) -> int:
        """A read-only descriptor of one of the artifact's files, closed with it."""
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                self._fds[path] = fd
            return fd

    _fd = fd  # the name older callers use

    def raw(self, name: str) -> memoryview:
        """Zero-copy read-only view of a tensor's bytes (mmap-backed for file data)."""
        src = self.tensors[name].source
        if isinstance(src, InlineBytes):
            return memoryview(src.data)
        if src.length == 0:
            return memoryview(b"")
        return memoryview(self._map(src.path))[src.offset : src.offset + src.length]

    def release(self, name: str, start: int = 0, length: int | None = None) -> None:
        """Drop bytes ``[start, start + length)`` of a tensor from this process's mapping.

        The pages stay in the page cache and a later access maps them again, so this is
        always safe; it keeps the resident set flat while a long pass walks a tensor
        through :meth:`raw` views (an mmap counts every page it touched until unmapped).
        """
        src = self.tensors[name].source
        if isinstance(src, InlineBytes) or not hasattr(mmap, "MADV_DONTNEED"):
            return
        with self._lock:
            m = self._maps.get(src.path)
            if m is None or m.closed:
                return
            end = src.offset + src.length if length is None else src.offset + start + length
            begin = (src.offset + start) // mmap.PAGESIZE * mmap.PAGESIZE
            end = min(len(m), -(-end // mmap.PAGESIZE) * mmap.PAGESIZE)
            if end > begin:
                m.madvise(mmap.MADV_DONTNEED, begin, end - begin)

    def iter_bytes(self, name: str, chunk: int = STREAM_CHUNK) -> Iterator[memoryview]:
        """Stream a tensor's bytes. Each yielded view is only valid until the next one."""
        src = self.tensors[name].source
        if isinstance(src, InlineBytes):
            view = memoryview(src.data)
            for start in range(0, len(view), chunk):
                yield view[start : start + chunk]
            return
        yield from stream_file_range(self.fd(src.path), src.offset, src.length, chunk, src.path)

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy array in its storage dtype (a zero-copy view).

        Block-quantized tensors come back as their raw ``uint8`` blocks; use
        :meth:`to_float` for values.
        """
        from scanner.values import as_array

        return as_array(self.tensors[name], self.raw(name))

    def to_float(self, name: str) -> np.ndarray:
        """The tensor's values as float32 (float64 for F64), dequantizing block formats."""
        from scanner.values import to_float

        return to_float(self.tensors[name], self.raw(name))


def stream_file_range(
    fd: int, offset: int, length: int, chunk: int, path: Path | str = "?"
) -> Iterator[memoryview]:
    """Read ``length`` bytes at ``offset`` through one reusable buffer.

    ``pread`` into a private buffer, unlike touching an mmap, does not grow the process's
    resident set with file pages, so hashing or comparing a 30 GB model stays small.
    """
    buf = bytearray(min(chunk, max(length, 1)))
    view = memoryview(buf)
    pos, end = offset, offset + length
    while pos < end:
        want = min(len(buf), end - pos)
        got = os.preadv(fd, [view[:want]], pos)
        if got <= 0:
            raise ArtifactError(path, f"file ended at byte {pos}, expected data up to {end}")
        yield view[:got]
        pos += got
