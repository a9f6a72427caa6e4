"""A canonical form of an ONNX graph: what it computes, not how it is stored or named.

Exporters and optimizers express the same computation in many ways. Before two graphs are
compared both are brought to one form, so that only real differences remain:

- tensor and node names are dropped (tensors are identified by what produces them);
- initializers and ``Constant`` nodes are both constants; ``Identity`` and ``Dropout``
  are aliases; attributes equal to the schema default are dropped; attributes that moved
  to inputs between opsets (``axes``, ``split``, Clip ``min``/``max``) are inputs;
- fused operators of ONNX Runtime are split back into their parts (``FusedConv``,
  ``FusedGemm``, ``FusedMatMul``, ``Gemm``, ``HardSwish``);
- constant sub-expressions are evaluated; ``Conv`` followed by ``BatchNormalization`` or a
  per-channel ``Add`` / ``Mul`` is folded into the convolution, numerically, so a fused
  weight can be compared with the one computed here;
- quantize/dequantize pairs collapse to their float input, dequantized constant weights
  and ONNX Runtime's dynamic quantization (``DynamicQuantizeLinear`` + ``MatMulInteger`` /
  ``ConvInteger``) collapse to the float operator.

Every constant keeps the stored tensors it was derived from, so a proven rewrite can
explain exactly those tensors in the weight diff. Each tensor then gets an *upstream*
hash (its operator cone, Merkle-style) and each node a *downstream* hash (what consumes
it up to the outputs); :mod:`scanner.graph.diff` matches nodes with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from scanner.lazy import lazy_module

# Imported on first use: scanning a safetensors file loads this module but never ONNX.
onnx = lazy_module("onnx")
numpy_helper = lazy_module("onnx.numpy_helper")

SMALL_CONST = 64
"""Constants up to this many elements are compared by value (shapes, axes, thresholds,
trigger patterns); larger ones (weights) by dtype and shape only: their values are the
weight diff's business, and a fused weight is checked numerically after matching."""
FOLD_LIMIT = 1 << 20
"""Constant sub-expressions with results up to this many elements are evaluated."""

ValueLoader = Callable[[str], "np.ndarray | None"]


def _h(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest()


@dataclass
class Const:
    """A constant tensor: stored (initializer / Constant node) or derived from stored ones."""

    dtype: int
    shape: tuple[int, ...]
    sources: tuple[str, ...]
    """Artifact tensor keys this constant was stored as or computed from."""
    derivation: str = "stored"
    _value: np.ndarray | None = field(default=None, repr=False)
    _loader: Callable[[], np.ndarray | None] | None = field(default=None, repr=False)
    atol: np.ndarray | None = field(default=None, repr=False)
    """Per-element bound (broadcastable to ``shape``) on how far this value may be from the
    float value it stands for: half a quantization step for a dequantized weight, scaled
    along through folds. ``None`` for exact values (only float rounding apart)."""
    round_trip: tuple[str, ...] = ()
    """Stored scales / zero points of a QuantizeLinear -> DequantizeLinear round trip that
    quantizes a *float* constant at run time (no integer codes stored): once the value is
    verified within its bound they are explained, since the float itself is stored alike
    and compared by the weight diff."""

    def value(self) -> np.ndarray | None:
        if self._value is None and self._loader is not None:
            self._value = self._loader()
            self._loader = None
        return self._value

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def value_kind(self) -> str:
        """``f`` for floating-point element types, the ONNX type number otherwise."""
        return _kind(self.dtype)

    def signature(self) -> str:
        if self.numel <= SMALL_CONST:
            v = self.value()
            if v is not None:
                if v.dtype.kind == "f":
                    text = ",".join(f"{x:.5g}" for x in v.astype(np.float64).ravel())
                else:
                    text = ",".join(str(x) for x in v.ravel().tolist())
                return _h("cv", v.dtype.kind, self.shape, text)
        return _h("cs", _kind(self.dtype), self.shape)


def _kind(dtype: int) -> str:
    if dtype in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    ):
        return "f"
    return str(dtype)


def const_from_array(
    value: np.ndarray, sources: tuple[str, ...], derivation: str, atol: np.ndarray | None = None
) -> Const:
    arr = np.asarray(value)
    dtype = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
    return Const(int(dtype), tuple(int(d) for d in arr.shape), sources, derivation, arr, atol=atol)


@dataclass
class Node:
    """A node of the canonical graph (mutable only while the canonical form is built)."""

    id: int
    name: str
    op: str
    """``op_type`` for the default domain, ``domain::op_type`` otherwise."""
    attrs: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    scope: str = ""
    origin: tuple[str, ...] = ()
    """Names of the original nodes this node stands for (several after a fusion)."""
    bodies: tuple[str, ...] = ()
    """Scopes of the subgraphs this node owns (If / Loop / Scan)."""
    free: tuple[str, ...] = ()
    """Outer-scope tensors its subgraphs read."""


@dataclass
class Body:
    parent: int
    inputs: list[str]
    outputs: list[str]


@dataclass
class CanonicalGraph:
    nodes: dict[int, Node]
    consts: dict[str, Const]
    inputs: list[str]
    """Graph inputs (tensor ids; for graph inputs the id is the name)."""
    outputs: list[str]
    output_names: list[str]
    bodies: dict[str, Body]
    input_types: dict[str, tuple[int, tuple[Any, ...]]]
    elem_types: dict[str, int] = field(default_factory=dict)
    """Element type of tensors in every scope (from ONNX shape inference, when it
    succeeds, plus the declared types of inputs, outputs and initializers)."""
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    """Static shape of tensors where shape inference knows the rank (``None`` for an
    unknown dimension). Only rewrites whose validity depends on a length read it."""
    absorbed: set[str] = field(default_factory=set)
    """Stored tensors that only parametrized nodes proven to be identities (a Slice keeping
    whole axes, a Pad of zeros): gone from the canonical form, and rightly so."""
    unused: set[str] = field(default_factory=set)
    """Stored tensors no node, subgraph or graph output reads: ONNX cannot compute with
    them, so adding or dropping one changes nothing the graph computes."""
    qrange: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """Tensors whose every reader was a collapsed QuantizeLinear -> DequantizeLinear pair:
    the float interval ``[lo, hi]`` the quantized path can represent (the union over its
    readers) and half the largest step. Downstream of such a tensor, values outside
    ``[lo, hi]`` never survive, which makes a Clip / Relu whose interval contains it a
    no-op (ONNX Runtime's QDQ quantizer removes them on that ground)."""
    notes: list[str] = field(default_factory=list)
    """Rewrites applied while canonicalizing ("folded 35 BatchNormalization into Conv")."""
    uhash: dict[str, str] = field(default_factory=dict)
    nhash: dict[int, str] = field(default_factory=dict)
    dhash: dict[int, str] = field(default_factory=dict)
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def index(self) -> None:
        self.producer = {}
        self.consumers = {}
        for node in self.nodes.values():
            for o in node.outputs:
                if o:
                    self.producer[o] = node.id
            for slot, i in enumerate(node.inputs):
                if i:
                    self.consumers.setdefault(i, []).append((node.id, slot))
            for i in node.free:
                self.consumers.setdefault(i, []).append((node.id, -1))

    def const_of(self, tensor: str) -> Const | None:
        return self.consts.get(tensor)


# --------------------------------------------------------------------------- building


class _Builder:
    def __init__(self, model: onnx.ModelProto, loader: ValueLoader | None) -> None:
        self.model = model
        self.loader = loader
        self.nodes: dict[int, Node] = {}
        self.consts: dict[str, Const] = {}
        self.bodies: dict[str, Body] = {}
        self.keys: set[str] = set()
        self.next_id = 0
        self.declared_only = False
        """Shape inference failed: only graph inputs and initializers say types."""
        self.elem_types: dict[str, int] = {}
        self.shapes: dict[str, tuple[int | None, ...]] = {}

    def record_types(self, graph: onnx.GraphProto, local: dict[str, str], scope: str) -> None:
        """Element types and static shapes the graph declares or shape inference found."""
        infos = [*graph.input]
        if not self.declared_only:
            infos += [*graph.value_info, *graph.output]
        for vi in infos:
            tid = local.get(vi.name, None if scope else vi.name)
            if tid is None or not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.elem_types.setdefault(tid, tt.elem_type)
            if tt.HasField("shape"):
                self.shapes.setdefault(
                    tid,
                    tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim),
                )
        for init in graph.initializer:
            tid = local.get(init.name)
            if tid is not None:
                self.elem_types[tid] = init.data_type
                self.shapes[tid] = tuple(int(d) for d in init.dims)

    def key_for(self, name: str, scope: str) -> str:
        # Mirrors the reader's naming of tensors so explanations name the same keys.
        key = name if name not in self.keys else f"{scope}::{name}"
        self.keys.add(key)
        return key

    def add_const(self, tid: str, tensor: onnx.TensorProto, key: str) -> None:
        dims = tuple(int(d) for d in tensor.dims)

        def load(tensor: onnx.TensorProto = tensor, key: str = key) -> np.ndarray | None:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                return self.loader(key) if self.loader is not None else None
            try:
                return numpy_helper.to_array(tensor)
            except Exception:  # an odd encoding only costs us the value, not the structure
                return None

        self.consts[tid] = Const(int(tensor.data_type), dims, (key,), "stored", None, load)

    def walk(
        self, graph: onnx.GraphProto, scope: str, env: dict[str, str], free: set[str] | None
    ) -> None:
        local = dict(env)
        defined: set[str] = set()

        def define(name: str) -> str:
            tid = name if not scope else f"{scope}::{name}"
            local[name] = tid
            defined.add(tid)
            return tid

        for init in graph.initializer:
            self.add_const(define(init.name), init, self.key_for(init.name, scope))
        for sparse in graph.sparse_initializer:
            dense = numpy_helper.to_array(sparse)
            key = self.key_for(sparse.values.name, scope)
            self.consts[define(sparse.values.name)] = const_from_array(dense, (key,), "stored")
        if scope:
            for gi in graph.input:
                define(gi.name)

        def resolve(name: str) -> str:
            if not name:
                return ""
            tid = local.get(name, name)
            if free is not None and tid not in defined:
                free.add(tid)
            return tid

        for index, proto in enumerate(graph.node):
            name = proto.name or f"{proto.op_type}_{index}"
            op = (
                proto.op_type
                if proto.domain in ("", "ai.onnx")
                else f"{proto.domain}::{proto.op_type}"
            )
            attrs: dict[str, Any] = {}
            sub: list[tuple[str, onnx.GraphProto]] = []
            for a in proto.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    sub.append((f"{name}/{a.name}", a.g))
                elif a.type == onnx.AttributeProto.GRAPHS:
                    sub.extend((f"{name}/{a.name}[{i}]", g) for i, g in enumerate(a.graphs))
                elif a.type == onnx.AttributeProto.TENSOR:
                    attrs[a.name] = numpy_helper.to_array(a.t)
                else:
                    attrs[a.name] = onnx.helper.get_attribute_value(a)
            inputs = [resolve(i) for i in proto.input]
            if op == "Constant" and proto.output:
                value = _constant_value(proto)
                key = self.key_for(proto.output[0], scope)
                if value is not None:
                    tid = define(proto.output[0])
                    self.consts[tid] = const_from_array(value, (key,), "stored")
                    continue
            outputs = [define(o) if o else "" for o in proto.output]
            node = Node(self.next_id, name, op, attrs, inputs, outputs, scope, (name,))
            self.next_id += 1
            self.nodes[node.id] = node
            body_scopes = []
            body_free: set[str] = set()
            for sub_name, g in sub:
                sub_scope = f"{scope}/{sub_name}" if scope else sub_name
                body_scopes.append(sub_scope)
                self.walk_body(g, sub_scope, local, body_free, node.id)
            if body_scopes:
                node.bodies = tuple(body_scopes)
                node.free = tuple(sorted(body_free))
                if free is not None:
                    free.update(t for t in body_free if t not in defined)
        self.record_types(graph, local, scope)

    def walk_body(
        self, g: onnx.GraphProto, scope: str, env: dict[str, str], free: set[str], parent: int
    ) -> None:
        self.walk(g, scope, env, free)
        ids = [f"{scope}::{i.name}" for i in g.input]
        outs = []
        for o in g.output:
            local = f"{scope}::{o.name}"
            outs.append(local if local in self._defined_ids() else env.get(o.name, o.name))
        self.bodies[scope] = Body(parent, ids, outs)

    def _defined_ids(self) -> set[str]:
        ids = set(self.consts)
        for n in self.nodes.values():
            ids.update(n.outputs)
        return ids


def _unused_stored(g: CanonicalGraph) -> set[str]:
    read = set(g.outputs)
    for n in g.nodes.values():
        read.update(n.inputs)
        read.update(n.free)
    for body in g.bodies.values():
        read.update(body.outputs)
    return {
        key
        for tid, c in g.consts.items()
        if tid not in read and c.derivation == "stored"
        for key in c.sources
    }


def _all_graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _all_graphs(sub)


@contextmanager
def _inferred_types(model: onnx.ModelProto) -> Iterator[bool]:
    """``model`` with ONNX shape inference's value_info and output types in every graph,
    while the context lasts; yields False when inference fails (types and shapes are
    conveniences: without them redundant Casts stay nodes and Splits stay Splits).

    Declared intermediate shapes (``value_info``) and output shapes are set aside while
    inferring: the runtime checks neither, so a file could declare a dimension its
    operators never produce, and rewrites that rely on a length must not take its word.
    Graph inputs keep their declared shapes: the runtime rejects inputs that differ. The
    inferred types are copied into the caller's model (and its own put back on exit)
    rather than building from inference's copy, which would need the weights too."""
    graphs = list(_all_graphs(model.graph))
    saved = []
    for graph in graphs:
        outs = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in graph.output]
        saved.append((list(graph.value_info), outs))
        del graph.value_info[:]
        for o in graph.output:
            if o.type.HasField("tensor_type"):
                o.type.tensor_type.ClearField("shape")
    try:
        yield _install_inferred_types(model, graphs)
    finally:
        for graph, (value_info, outs) in zip(graphs, saved, strict=True):
            del graph.value_info[:]
            graph.value_info.extend(value_info)
            for o, kept in zip(graph.output, outs, strict=True):
                o.CopyFrom(kept)


def _install_inferred_types(model: onnx.ModelProto, graphs: list[onnx.GraphProto]) -> bool:
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weight_data(model), strict_mode=False)
    except Exception:
        return False
    typed = list(_all_graphs(inferred.graph))
    if len(typed) != len(graphs) or any(
        len(g.node) != len(t.node) or len(g.output) != len(t.output)
        for g, t in zip(graphs, typed, strict=True)
    ):
        return False
    for graph, t in zip(graphs, typed, strict=True):
        graph.value_info.extend(t.value_info)
        for o, inferred_output in zip(graph.output, t.output, strict=True):
            o.type.CopyFrom(inferred_output.type)
    return True


_INDEX_TYPES = frozenset({7, 6, 5})  # TensorProto INT64, INT32, INT16 (onnx loads lazily)
"""Element types a shape, axes, pads or repeats input can have: always kept whole."""
_SET_ASIDE_BYTES = 1024


def _without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """What shape inference reads of ``model``: everything but the data of the main
    graph's large non-index initializers and Constant nodes (inference reads the values
    of shape-like integer inputs only, and copying the weights in and out would cost
    more than the inference itself), which keep their name, type and dimensions."""
    lean = onnx.ModelProto()
    lean.ir_version = model.ir_version
    lean.opset_import.extend(model.opset_import)
    lean.functions.extend(model.functions)
    graph, src = lean.graph, model.graph
    graph.name = src.name
    for node in src.node:
        value = _tensor_value(node) if node.op_type == "Constant" and not node.domain else None
        if value is not None and _large_weight(value):
            # A weight stored as a Constant node: inference needs its type and dimensions.
            stub = graph.node.add(op_type="Constant", name=node.name, output=node.output)
            stub.attribute.add(name="value", type=onnx.AttributeProto.TENSOR).t.CopyFrom(
                onnx.TensorProto(dims=value.dims, data_type=value.data_type)
            )
        else:
            graph.node.append(node)
    graph.input.extend(src.input)
    graph.output.extend(src.output)
    graph.sparse_initializer.extend(src.sparse_initializer)
    for init in src.initializer:
        if _large_weight(init):
            graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
        else:
            graph.initializer.append(init)
    return lean


def _large_weight(tensor: onnx.TensorProto | None) -> bool:
    return (
        tensor is not None
        and tensor.data_type not in _INDEX_TYPES
        and tensor.ByteSize() > _SET_ASIDE_BYTES
    )


def _tensor_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds in its ``value`` attribute, if that is how."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return a.t
    return None


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            try:
                return numpy_helper.to_array(a.t)
            except Exception:
                return None
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            v = onnx.helper.get_attribute_value(a)
            return np.asarray(v, dtype=np.float32 if "float" in a.name else np.int64)
    return None


def canonicalize(model: onnx.ModelProto, loader: ValueLoader | None = None) -> CanonicalGraph:
    """The canonical form of ``model`` with hashes computed. ``loader(key)`` returns the
    values of a tensor stored as external data (``None`` when unavailable)."""
    b = _Builder(model, loader)
    with _inferred_types(model) as inferred:
        b.declared_only = not inferred
        b.walk(model.graph, "", {}, None)
    for fn in model.functions:
        scope = f"function:{fn.domain}:{fn.name}"
        fake = onnx.helper.make_graph(list(fn.node), fn.name, [], [])
        b.walk(fake, scope, {}, set())
        b.bodies[scope] = Body(
            -1, [f"{scope}::{i}" for i in fn.input], [f"{scope}::{o}" for o in fn.output]
        )
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in init_names]
    input_types = {
        i.name: (
            i.type.tensor_type.elem_type,
            tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in i.type.tensor_type.shape.dim
            ),
        )
        for i in model.graph.input
        if i.name not in init_names
    }
    g = CanonicalGraph(
        b.nodes,
        b.consts,
        inputs,
        [o.name for o in model.graph.output],
        [o.name for o in model.graph.output],
        b.bodies,
        input_types,
    )
    g.elem_types = b.elem_types
    g.shapes = b.shapes
    g.unused = _unused_stored(g)
    from scanner.graph.rewrites import normalize

    normalize(g)
    compute_hashes(g)
    return g


# --------------------------------------------------------------------------- hashing


@lru_cache(maxsize=4096)
def _schema_defaults(op: str) -> dict[str, str]:
    domain, _, op_type = op.rpartition("::")
    try:
        schema = onnx.defs.get_schema(op_type, domain=domain)
    except Exception:
        base = CONTRIB_BASE.get(op)
        return _schema_defaults(base) if base else {}
    out = {}
    for name, attr in schema.attributes.items():
        if attr.default_value is not None and attr.default_value.type != 0:
            out[name] = _attr_text(onnx.helper.get_attribute_value(attr.default_value))
    return out


def _attr_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, np.ndarray):
        return _h(value.dtype.kind, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_attr_text(v) for v in value) + "]"
    return str(value)


CONTRIB_BASE = {
    "com.microsoft::DynamicQuantizeLSTM": "LSTM",
    "com.microsoft::FusedConv": "Conv",
    "com.microsoft::NhwcConv": "Conv",
    "com.microsoft::FusedGemm": "Gemm",
    "com.microsoft::QLinearConv": "QLinearConv",
    "com.microsoft.nchwc::Conv": "Conv",
    "com.microsoft.nchwc::MaxPool": "MaxPool",
    "com.microsoft.nchwc::AveragePool": "AveragePool",
}
"""ONNX Runtime operators whose schema is not in the ``onnx`` package, and the standard
operator whose attribute defaults they share (ONNX Runtime writes some defaults out)."""

COMMUTATIVE = {"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Xor", "Equal", "Mean"}
IGNORED_ATTRS = {"Conv": {"kernel_shape"}, "ConvTranspose": {"kernel_shape"}}
"""Attributes that only restate what the inputs already fix (kernel_shape = W's shape)."""


def attr_signature(node: Node) -> str:
    defaults = _schema_defaults(node.op)
    skip = IGNORED_ATTRS.get(node.op, set())
    items = []
    for k in sorted(node.attrs):
        if k in skip:
            continue
        text = _attr_text(node.attrs[k])
        if defaults.get(k) == text:
            continue
        if (
            node.op in ("Conv", "MaxPool", "AveragePool", "ConvTranspose")
            and k in ("pads", "dilations", "strides")
            and set(text.strip("[]").split(",")) <= ({"0"} if k == "pads" else {"1"})
        ):
            continue
        items.append((k, text))
    return _h(node.op, tuple(items))


def topo_order(g: CanonicalGraph, scope: str) -> list[Node]:
    """Nodes of one scope in dependency order (stable for ties: the stored order)."""
    nodes = [n for n in g.nodes.values() if n.scope == scope]
    ids = {n.id for n in nodes}
    deps: dict[int, set[int]] = {}
    for n in nodes:
        d = set()
        for t in (*n.inputs, *n.free):
            p = g.producer.get(t)
            while p is not None and p not in ids:
                # a tensor from a nested body never feeds this scope directly; from an
                # outer scope it is ready before this scope runs.
                p = None
            if p is not None and p != n.id:
                d.add(p)
        deps[n.id] = d
    users: dict[int, list[int]] = {}
    for nid, d in deps.items():
        for p in d:
            users.setdefault(p, []).append(nid)
    ready = sorted(nid for nid, d in deps.items() if not d)
    remaining = {nid: len(d) for nid, d in deps.items()}
    out: list[Node] = []
    import heapq

    heapq.heapify(ready)
    while ready:
        nid = heapq.heappop(ready)
        out.append(g.nodes[nid])
        for u in users.get(nid, ()):
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(out) < len(nodes):  # a cycle: keep the rest in stored order rather than fail
        seen = {n.id for n in out}
        out.extend(n for n in nodes if n.id not in seen)
    return out


def compute_hashes(g: CanonicalGraph) -> None:
    g.index()
    uh: dict[str, str] = {}
    for name in g.inputs:
        uh[name] = _h("in", name)
    for tid, c in g.consts.items():
        uh[tid] = _h("c", c.signature())
    nh: dict[int, str] = {}

    def up(t: str) -> str:
        if not t:
            return "-"
        return uh.get(t) or _h("unknown", t.rpartition("::")[2] if "::" in t else t)

    def run_scope(scope: str) -> None:
        for n in topo_order(g, scope):
            ins = tuple(up(i) for i in n.inputs)
            if n.op in COMMUTATIVE:
                ins = tuple(sorted(ins))
            pre = _h(attr_signature(n), ins)
            body_sig = []
            for s in n.bodies:
                body = g.bodies[s]
                for i, t in enumerate(body.inputs):
                    uh[t] = _h("bin", pre, i)
                run_scope(s)
                body_sig.append(tuple(up(t) for t in body.outputs))
            nh[n.id] = _h(pre, tuple(body_sig))
            for i, o in enumerate(n.outputs):
                if o:
                    uh[o] = _h(nh[n.id], i)

    run_scope("")
    for s, body in g.bodies.items():
        if body.parent == -1:
            for i, t in enumerate(body.inputs):
                uh[t] = _h("fin", s, i)
            run_scope(s)
    g.uhash, g.nhash = uh, nh
    # Downstream: what consumes a node's outputs, up to the graph outputs.
    dh: dict[int, str] = {}
    out_marks: dict[str, list[str]] = {}
    for i, t in enumerate(g.outputs):
        out_marks.setdefault(t, []).append(f"out:{g.output_names[i]}")
    for s, body in g.bodies.items():
        for i, t in enumerate(body.outputs):
            out_marks.setdefault(t, []).append(f"bout:{s.rpartition('/')[2]}:{i}")

    def run_down(scope: str) -> None:
        order = topo_order(g, scope)
        for n in reversed(order):
            for s in n.bodies:
                run_down(s)
            marks: list[Any] = []
            for i, o in enumerate(n.outputs):
                for cid, slot in g.consumers.get(o, ()):
                    # which operand of a commutative op a tensor is says nothing
                    pos = 0 if g.nodes[cid].op in COMMUTATIVE and slot >= 0 else slot
                    marks.append((i, dh.get(cid, "?"), pos))
                marks.extend((i, m) for m in out_marks.get(o, ()))
            dh[n.id] = _h(attr_signature(n), tuple(sorted(map(repr, marks))))

    run_down("")
    for s, body in g.bodies.items():
        if body.parent == -1:
            run_down(s)
    g.dhash = dh


def iter_scope_nodes(g: CanonicalGraph, scope: str) -> Iterable[Node]:
    return (n for n in g.nodes.values() if n.scope == scope)
