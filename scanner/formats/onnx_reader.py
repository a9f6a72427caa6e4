"""ONNX: weights from initializers, ``Constant`` nodes, subgraphs and model-local functions.

Real exporters store weights in several places, so all of them are tensors here:
graph initializers, the ``value`` of ``Constant`` nodes, the same inside ``If`` /
``Loop`` / ``Scan`` bodies and inside model-local functions. External data is resolved
only inside the model's folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scanner.artifact import Artifact, FileInfo, FileSpan, Graph, GraphNode, InlineBytes, TensorInfo
from scanner.dtypes import DTYPES
from scanner.errors import MalformedArtifactError, ResourceLimitError
from scanner.formats.base import Limits, resolve_inside
from scanner.lazy import lazy_module

# Imported on first use: every command loads the readers to sniff formats by magic
# bytes, and only an ONNX file should pay for the onnx package.
onnx = lazy_module("onnx")
np = lazy_module("numpy")
numpy_helper = lazy_module("onnx.numpy_helper")

FORMAT = "onnx"

_ONNX_TO_DTYPE = {
    # TensorProto.DataType numbers, fixed by the ONNX format (onnx.proto): written out so
    # that the map does not import onnx.
    1: "F32",  # FLOAT
    2: "U8",  # UINT8
    3: "I8",  # INT8
    4: "U16",  # UINT16
    5: "I16",  # INT16
    6: "I32",  # INT32
    7: "I64",  # INT64
    9: "BOOL",  # BOOL
    10: "F16",  # FLOAT16
    11: "F64",  # DOUBLE
    12: "U32",  # UINT32
    13: "U64",  # UINT64
    14: "C64",  # COMPLEX64
    15: "C128",  # COMPLEX128
    16: "BF16",  # BFLOAT16
    17: "F8_E4M3",  # FLOAT8E4M3FN
    18: "F8_E4M3FNUZ",  # FLOAT8E4M3FNUZ
    19: "F8_E5M2",  # FLOAT8E5M2
    20: "F8_E5M2FNUZ",  # FLOAT8E5M2FNUZ
    21: "U4",  # UINT4
    22: "I4",  # INT4
}

# Field tags of ModelProto that a real model file starts with (ir_version = 1,
# producer_name = 2, graph = 7, opset_import = 8).
_FIRST_BYTES = (0x08, 0x12, 0x3A, 0x42)


class OnnxReader:
    format = FORMAT

    def sniff(self, head: bytes) -> bool:
        if len(head) < 2 or head[0] not in _FIRST_BYTES:
            return False
        if head[0] == 0x08:
            return head[1] < 0x80 and 1 <= head[1] <= 20  # ir_version, a small varint
        return True

    def open(self, path: Path, root: Path, limits: Limits) -> Artifact:
        model = _load(path)
        relpath = path.relative_to(root).as_posix() if path != root else path.name
        folder = path.parent
        collector = _Collector(path, folder, relpath, limits)
        nodes: list[GraphNode] = []
        collector.walk_graph(model.graph, "", nodes)
        for fn in model.functions:
            scope = f"function:{fn.domain}:{fn.name}"
            collector.walk_nodes(fn.node, scope, nodes)
        files = [FileInfo(relpath, path, os.path.getsize(path), "weights")]
        for ext_rel, ext_path in sorted(collector.external_files.items()):
            files.append(FileInfo(ext_rel, ext_path, os.path.getsize(ext_path), "weights"))
        graph = Graph(
            nodes=tuple(nodes),
            inputs=tuple(i.name for i in model.graph.input),
            outputs=tuple(o.name for o in model.graph.output),
            opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
            model=model,
        )
        metadata = {
            "ir_version": model.ir_version,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "opsets": dict(graph.opsets),
            "metadata_props": {p.key: p.value for p in model.metadata_props},
        }
        return Artifact(
            path, root, FORMAT, tuple(files), collector.tensors, graph=graph, metadata=metadata
        )


def _load(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise MalformedArtifactError(path, f"not a valid ONNX protobuf: {exc}") from None
    if not model.HasField("graph"):
        raise MalformedArtifactError(path, "ONNX model has no graph")
    return model


class _Collector:
    def __init__(self, path: Path, folder: Path, relpath: str, limits: Limits) -> None:
        self.path = path
        self.folder = folder
        self.relpath = relpath
        self.limits = limits
        self.tensors: dict[str, TensorInfo] = {}
        self.external_files: dict[str, Path] = {}
        self._depth = 0

    def walk_graph(self, graph: onnx.GraphProto, scope: str, nodes: list[GraphNode]) -> None:
        self._depth += 1
        if self._depth > 64:
            raise ResourceLimitError(self.path, "ONNX subgraphs nest more than 64 levels deep")
        names_here = set()
        for init in graph.initializer:
            if init.name in names_here:
                raise MalformedArtifactError(
                    self.path, f"initializer {init.name!r} is defined twice in the same graph"
                )
            names_here.add(init.name)
            self._add(init.name, init, scope)
        for sparse in graph.sparse_initializer:
            self._add(sparse.values.name, sparse.values, scope, sparse=sparse)
        self.walk_nodes(graph.node, scope, nodes)
        self._depth -= 1

    def walk_nodes(self, node_list: Any, scope: str, nodes: list[GraphNode]) -> None:
        for index, node in enumerate(node_list):
            name = node.name or f"{node.op_type}_{index}"
            nodes.append(
                GraphNode(
                    name=name,
                    op_type=node.op_type,
                    domain=node.domain,
                    inputs=tuple(node.input),
                    outputs=tuple(node.output),
                    scope=scope,
                )
            )
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                tensor = _constant_value(node)
                if tensor is not None:
                    self._add(node.output[0], tensor, scope)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    self.walk_graph(attr.g, _join(scope, f"{name}/{attr.name}"), nodes)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for i, g in enumerate(attr.graphs):
                        self.walk_graph(g, _join(scope, f"{name}/{attr.name}[{i}]"), nodes)

    def _add(self, name: str, tensor: onnx.TensorProto, scope: str, sparse: Any = None) -> None:
        if len(self.tensors) >= self.limits.max_tensors:
            raise ResourceLimitError(self.path, f"more than {self.limits.max_tensors} tensors")
        key = name if name not in self.tensors else f"{scope}::{name}"
        if key in self.tensors:
            raise MalformedArtifactError(
                self.path, f"tensor {name!r} is defined twice in {scope or 'the main graph'}"
            )
        self.tensors[key] = self._info(key, tensor, sparse)

    def _info(self, key: str, tensor: onnx.TensorProto, sparse: Any) -> TensorInfo:
        dtype_name = _ONNX_TO_DTYPE.get(tensor.data_type)
        if dtype_name is None:
            raise MalformedArtifactError(
                self.path, f"tensor {key!r} has unsupported ONNX data type {tensor.data_type}"
            )
        dt = DTYPES[dtype_name]
        shape = tuple(int(d) for d in (sparse.dims if sparse is not None else tensor.dims))
        if len(shape) > self.limits.max_dims or any(d < 0 for d in shape):
            raise MalformedArtifactError(self.path, f"tensor {key!r} has invalid dims {shape}")
        n = int(np.prod(shape, dtype=object)) if shape else 1
        expected = dt.nbytes(n)
        if sparse is not None:
            dense = numpy_helper.to_array(sparse)  # sparse tensors are small by construction
            source: FileSpan | InlineBytes = InlineBytes(_le_bytes(dense))
        elif tensor.data_location == onnx.TensorProto.EXTERNAL:
            source = self._external(key, tensor, expected)
        elif tensor.HasField("raw_data"):
            source = InlineBytes(tensor.raw_data)
        else:
            try:
                array = numpy_helper.to_array(tensor)
            except Exception as exc:
                raise MalformedArtifactError(self.path, f"tensor {key!r}: {exc}") from None
            source = InlineBytes(_le_bytes(array) if dt.bits_per_element == 0 else _pack4(array))
        if source.length != expected:
            raise MalformedArtifactError(
                self.path,
                f"tensor {key!r}: dims {list(shape)} x {dtype_name} need {expected} bytes, "
                f"found {source.length}",
            )
        return TensorInfo(key, dt, shape, source, file=self._file_of(source))

    def _file_of(self, source: FileSpan | InlineBytes) -> str:
        if isinstance(source, FileSpan):
            for rel, p in self.external_files.items():
                if p == source.path:
                    return rel
        return self.relpath

    def _external(self, key: str, tensor: onnx.TensorProto, expected: int) -> FileSpan:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        real = resolve_inside(self.folder, location, f"tensor {key!r} external data", self.path)
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else expected
        except ValueError:
            raise MalformedArtifactError(
                self.path, f"tensor {key!r}: bad external offset/length"
            ) from None
        size = os.path.getsize(real)
        if offset < 0 or length < 0 or offset + length > size:
            raise MalformedArtifactError(
                self.path,
                f"tensor {key!r}: external data [{offset}, {offset + length}) is outside "
                f"{location!r} ({size} bytes)",
            )
        rel = real.relative_to(self.folder.resolve()).as_posix()
        self.external_files.setdefault(rel, real)
        return FileSpan(real, offset, length)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return attr.t
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            values = onnx.helper.get_attribute_value(attr)
            dtype = np.float32 if "float" in attr.name else np.int64
            return numpy_helper.from_array(np.asarray(values, dtype=dtype))
    return None


def _le_bytes(array: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def _pack4(array: np.ndarray) -> bytes:
    flat = np.asarray(array, dtype=np.int16).ravel() & 0x0F
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, dtype=flat.dtype)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def _join(scope: str, part: str) -> str:
    return f"{scope}/{part}" if scope else part


def iter_all_graphs(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """Every graph in a model (main graph first, then nested bodies), with its scope."""
    stack: list[tuple[str, onnx.GraphProto]] = [("", model.graph)]
    while stack:
        scope, graph = stack.pop()
        yield scope, graph
        for index, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}_{index}"
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append((_join(scope, f"{name}/{attr.name}"), attr.g))
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for i, g in enumerate(attr.graphs):
                        stack.append((_join(scope, f"{name}/{attr.name}[{i}]"), g))
