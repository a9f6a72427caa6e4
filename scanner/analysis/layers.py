"""Which weight feeds which: layer order, channel axes and per-channel parameters.

With an ONNX graph the answer is read from the graph: from each weight-bearing node
(Conv, MatMul, Gemm) follow the data forward through channel-preserving operators
(normalization, activations, residual Add, pooling, reshape, SE gating Mul) to the next
weight-bearing nodes; BatchNormalization parameters and constant Adds met on the way
are that layer's per-channel parameters. Without a graph the order comes from the names
(natural sort, so ``layers.10`` follows ``layers.9``) and the links from shapes: a
weight feeds the next weights whose input width matches its output width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from scanner.artifact import Artifact, TensorInfo

PASS_THROUGH = {
    "BatchNormalization", "InstanceNormalization", "Relu", "LeakyRelu", "PRelu", "Clip",
    "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Gelu", "Erf", "Add",
    "Sub", "Mul", "Div", "Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Softmax", "Cast",
    "Pad", "Resize", "Upsample", "Concat", "Transpose", "Softplus", "Mish", "Swish",
}  # fmt: skip
WEIGHT_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
NAME_WINDOW = 8
"""Without a graph, a weight may feed any of the next this many weights (residual
shortcuts skip a block) when shapes and channel indices agree."""


@dataclass(frozen=True)
class Layer:
    name: str
    order: int
    out_axis: int
    in_axis: int
    out_dim: int
    in_dim: int
    depthwise: bool = False
    params: tuple[str, ...] = ()
    """1-D tensors indexed by this layer's output channel (bias, BatchNorm)."""


@dataclass(frozen=True)
class LayerGraph:
    layers: Mapping[str, Layer]
    feeds: Mapping[str, tuple[str, ...]]
    """Weight name -> weights that read its output channels."""
    source: str
    """``graph`` or ``names``."""
    param_owner: Mapping[str, str] = field(default_factory=dict)

    def successors(self, name: str) -> tuple[str, ...]:
        return self.feeds.get(name, ())


def natural_key(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def infer_layers(artifact: Artifact) -> LayerGraph:
    if artifact.graph is not None and artifact.graph.model is not None:
        graph = _from_graph(artifact)
        if graph.layers:
            return graph
    return _from_names(artifact.tensors)


def _from_names(tensors: Mapping[str, TensorInfo]) -> LayerGraph:
    names = sorted(tensors, key=natural_key)
    floats = [n for n in names if tensors[n].dtype.name.startswith(("F", "BF"))]
    weights = [n for n in floats if len(tensors[n].shape) >= 2]
    layers: dict[str, Layer] = {}
    for i, n in enumerate(weights):
        shape = tensors[n].shape
        dw = shape[1] == 1 and len(shape) > 2
        layers[n] = Layer(n, i, 0, 1, shape[0], shape[1], depthwise=dw)
    # Per-channel parameters: 1-D tensors of the same module (``x.weight`` / ``x.bias``),
    # otherwise of the nearest preceding weight of that width (a BatchNorm after a conv).
    owner: dict[str, str] = {}
    prefix = {n.rsplit(".", 1)[0]: n for n in weights}
    last: str | None = None
    for n in floats:
        if n in layers:
            last = n
            continue
        if len(tensors[n].shape) != 1:
            continue
        width = tensors[n].shape[0]
        own = prefix.get(n.rsplit(".", 1)[0])
        if own is not None and layers[own].out_dim == width:
            owner[n] = own
        elif own is None and last is not None and layers[last].out_dim == width:
            owner[n] = last
    for p, w in owner.items():
        layers[w] = Layer(**{**layers[w].__dict__, "params": (*layers[w].params, p)})
    feeds: dict[str, tuple[str, ...]] = {}
    for i, n in enumerate(weights):
        out = layers[n].out_dim
        feeds[n] = tuple(
            m
            for m in weights[i + 1 : i + 1 + NAME_WINDOW]
            if layers[m].in_dim == out
            or (layers[m].depthwise and layers[m].out_dim == out)
            or (layers[m].in_dim > out and layers[m].in_dim % out == 0)
        )
    return LayerGraph(layers, feeds, "names", owner)


def _from_graph(artifact: Artifact) -> LayerGraph:
    model = artifact.graph.model  # type: ignore[union-attr]
    tensors = artifact.tensors
    nodes = list(model.graph.node)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    layers: dict[str, Layer] = {}
    weight_node: dict[int, str] = {}
    for i, node in enumerate(nodes):
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        w = node.input[1]
        if w not in tensors or len(tensors[w].shape) < 2:
            continue
        shape = tensors[w].shape
        if node.op_type == "MatMul":
            out_axis, in_axis = len(shape) - 1, len(shape) - 2
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            out_axis, in_axis = (0, 1) if trans_b else (1, 0)
        elif node.op_type == "ConvTranspose":
            out_axis, in_axis = 1, 0
        else:
            out_axis, in_axis = 0, 1
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        depthwise = node.op_type == "Conv" and group > 1 and shape[1] == 1
        layers[w] = Layer(
            w, len(layers), out_axis, in_axis, shape[out_axis], shape[in_axis], depthwise
        )
        weight_node[i] = w
    feeds: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for i, w in weight_node.items():
        node = nodes[i]
        params: list[str] = [n for n in node.input[2:] if n in tensors]
        found: list[str] = []
        seen: set[str] = set()
        frontier = list(node.output)
        while frontier:
            value = frontier.pop()
            if value in seen:
                continue
            seen.add(value)
            for j in consumers.get(value, ()):
                nxt = nodes[j]
                if j in weight_node and nxt.input[0] == value:
                    if weight_node[j] not in found:
                        found.append(weight_node[j])
                    continue
                if nxt.op_type not in PASS_THROUGH:
                    continue
                if nxt.op_type in (
                    "BatchNormalization",
                    "InstanceNormalization",
                    "Add",
                    "Sub",
                    "Mul",
                    "PRelu",
                ):
                    params.extend(
                        _param_of(n, tensors, nodes, layers[w].out_dim)
                        for n in nxt.input
                        if n != value and _param_of(n, tensors, nodes, layers[w].out_dim)
                    )
                frontier.extend(nxt.output)
        feeds[w] = tuple(found)
        unique = tuple(dict.fromkeys(p for p in params if p))
        for p in unique:
            owner.setdefault(p, w)
        layers[w] = Layer(**{**layers[w].__dict__, "params": unique})
    return LayerGraph(layers, feeds, "graph", owner)


def _param_of(value: str, tensors: Mapping[str, TensorInfo], nodes: list, width: int) -> str:
    """The 1-D per-channel tensor behind ``value`` (directly or through a Reshape)."""
    if value in tensors:
        shape = tensors[value].shape
        size = 1
        for s in shape:
            size *= s
        return value if size == width else ""
    for node in nodes:
        if value in node.output and node.op_type in ("Reshape", "Unsqueeze", "Identity"):
            return _param_of(node.input[0], tensors, nodes, width)
    return ""
