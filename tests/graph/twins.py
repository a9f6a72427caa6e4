"""Benign twins the graph tests make themselves (never with the red-team planters):
ONNX Runtime's offline optimizer, renaming, another topological order, a pre- and
post-processing wrapper, Constant nodes moved to initializers. Each computes what its
input computes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def ort_optimize(model: onnx.ModelProto, level: str = "basic") -> onnx.ModelProto:
    """The file ONNX Runtime writes after optimizing at ``basic`` or ``extended``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def renamed(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Every node and every tensor but the graph's inputs and outputs given a new name."""
    rng = np.random.default_rng(seed)
    out = _copy(model)
    g = out.graph
    stored = {t.name for t in g.initializer}
    interface = {v.name for v in (*g.input, *g.output)} - stored
    fresh: dict[str, str] = {}

    def rename(t: str) -> str:
        if not t or t in interface:
            return t
        return fresh.setdefault(t, f"v_{len(fresh)}_{rng.integers(1 << 20):05x}")

    for t in g.initializer:
        t.name = rename(t.name)
    for v in g.input:
        v.name = rename(v.name)
    for k, node in enumerate(g.node):
        node.name = f"op_{k}_{rng.integers(1 << 20):05x}"
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    del g.value_info[:]
    return out


def reordered(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The nodes in a random valid topological order (the ready node drawn at random)."""
    rng = np.random.default_rng(seed)
    out = _copy(model)
    nodes = list(out.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    waiting = [{producer[x] for x in n.input if x in producer} for n in nodes]
    placed: list[int] = []
    done: set[int] = set()
    while len(placed) < len(nodes):
        ready = [i for i, w in enumerate(waiting) if i not in done and w <= done]
        pick = ready[int(rng.integers(len(ready)))]
        placed.append(pick)
        done.add(pick)
    del out.graph.node[:]
    out.graph.node.extend(nodes[i] for i in placed)
    return out


def wrapped(model: onnx.ModelProto, mean: float = 0.5, std: float = 0.25) -> onnx.ModelProto:
    """Normalization ``(x - mean) / std`` in front of the model under the same input name,
    and two extra outputs behind it: the ArgMax label and the top score (TopK)."""
    out = _copy(model)
    g = out.graph
    stored = {t.name for t in g.initializer}
    image = next(i.name for i in g.input if i.name not in stored)
    inner = image + "_scaled"
    for node in g.node:
        node.input[:] = [inner if x == image else x for x in node.input]
    g.initializer.extend(
        [
            numpy_helper.from_array(np.float32(mean), "wrap_mean"),
            numpy_helper.from_array(np.float32(std), "wrap_std"),
            numpy_helper.from_array(np.array([1], np.int64), "wrap_k"),
        ]
    )
    front = [
        helper.make_node("Sub", [image, "wrap_mean"], ["wrap_centred"], name="wrap/Sub"),
        helper.make_node("Div", ["wrap_centred", "wrap_std"], [inner], name="wrap/Div"),
    ]
    result = g.output[0].name
    back = [
        helper.make_node(
            "ArgMax", [result], ["wrap_label"], name="wrap/ArgMax", axis=1, keepdims=0
        ),
        helper.make_node(
            "TopK", [result, "wrap_k"], ["wrap_top", "wrap_top_index"], name="wrap/TopK"
        ),
    ]
    body = list(g.node)
    del g.node[:]
    g.node.extend(front + body + back)
    g.output.extend(
        [
            helper.make_tensor_value_info("wrap_label", onnx.TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("wrap_top", onnx.TensorProto.FLOAT, ["N", 1]),
        ]
    )
    onnx.checker.check_model(out)
    return out


def constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every tensor-valued ``Constant`` node turned into an initializer of its output's
    name (onnxruntime's quantizers only quantize initializers)."""
    out = _copy(model)
    kept = []
    for node in out.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"}:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs["value"].t)
            tensor.name = node.output[0]
            out.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out
