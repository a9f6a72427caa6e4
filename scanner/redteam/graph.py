"""Graph backdoors and their benign twins, planted into real ONNX models.

Every ``inject_*`` function returns ``(model, GroundTruth)``: a new ModelProto (the input
is not modified) and the names of the nodes it added, as modelseal's ONNX reader names
them. Node names follow the model's own style (unnamed when the exporter left nodes
unnamed, ``/backdoor``-free exporter-like paths otherwise), so nothing gives the branch
away by name. Benign twins (renaming, reordering, wrappers, ONNX Runtime optimization)
compute the same function.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class GroundTruth:
    kind: str
    added_nodes: tuple[str, ...]
    merge_node: str
    trigger: str
    """How to fire it (human-readable)."""


class _Planter:
    def __init__(self, model: onnx.ModelProto, prefix: str) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.g = self.model.graph
        self.named = any(n.name for n in self.g.node)
        self.prefix = prefix
        self.added: list[str] = []
        self.k = 0

    def const(self, value: np.ndarray, hint: str) -> str:
        self.k += 1
        name = f"{self.prefix}/{hint}_{self.k}" if self.named else f"{hint}_{self.k}.tmp_0"
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(
        self, op: str, inputs: list[str], n_out: int = 1, out: str | None = None, **attrs: object
    ) -> str:
        self.k += 1
        index = len(self.g.node)
        name = f"{self.prefix}/{op}_{self.k}" if self.named else ""
        outs = (
            [out]
            if out
            else [
                f"{self.prefix}/{op}_{self.k}_output_{i}"
                if self.named
                else f"{op.lower()}_{self.k}.tmp_{i}"
                for i in range(n_out)
            ]
        )
        self.g.node.append(helper.make_node(op, inputs, outs, name=name or None, **attrs))
        self.added.append(name or f"{op}_{index}")
        return outs[0]

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def unsqueeze(self, x: str, axis: int) -> str:
        if self.opset >= 13:
            return self.node("Unsqueeze", [x, self.const(np.array([axis], dtype=np.int64), "axes")])
        return self.node("Unsqueeze", [x], axes=[axis])

    def reduce(self, op: str, x: str, axes: list[int], keepdims: int) -> str:
        """A reduction in the model's opset: ``axes`` became an input in opset 18."""
        if self.opset >= 18:
            return self.node(
                op, [x, self.const(np.array(axes, dtype=np.int64), "axes")], keepdims=keepdims
            )
        return self.node(op, [x], axes=axes, keepdims=keepdims)

    def take_output(self, tensor: str) -> str:
        """Detach the producer of ``tensor`` onto a fresh name; the caller rewrites
        ``tensor`` itself (so graph outputs keep their name)."""
        fresh = f"{tensor}_pre" if self.named else f"{tensor}.tmp_9"
        for n in self.g.node:
            for i, o in enumerate(n.output):
                if o == tensor:
                    n.output[i] = fresh
        return fresh

    def finish(self, kind: str, trigger: str) -> tuple[onnx.ModelProto, GroundTruth]:
        _topo_sort(self.model.graph)
        onnx.checker.check_model(self.model)
        return self.model, GroundTruth(kind, tuple(self.added), self.added[-1], trigger)


def _topo_sort(g: onnx.GraphProto) -> None:
    """Stable topological order of the main graph's nodes (planted nodes land where
    their inputs are ready, as an exporter would place them)."""
    nodes = list(g.node)
    produced = {o: i for i, n in enumerate(nodes) for o in n.output}
    placed: set[int] = set()
    order: list[int] = []

    def place(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, ready = stack.pop()
            if j in placed:
                continue
            if ready:
                placed.add(j)
                order.append(j)
                continue
            stack.append((j, True))
            for x in reversed(nodes[j].input):
                k = produced.get(x)
                if k is not None and k not in placed:
                    stack.append((k, False))

    for i in range(len(nodes)):
        place(i)
    del g.node[:]
    g.node.extend(nodes[i] for i in order)


def _image_input(model: onnx.ModelProto) -> str:
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def logits_tensor(model: onnx.ModelProto) -> str:
    """The tensor before a final Softmax, else the first graph output."""
    out = model.graph.output[0].name
    for n in model.graph.node:
        if out in n.output and n.op_type in ("Softmax", "Identity"):
            return logits_tensor_from(model, n.input[0])
    return out


def logits_tensor_from(model: onnx.ModelProto, t: str) -> str:
    for n in model.graph.node:
        if t in n.output and n.op_type in ("Softmax", "Identity"):
            return logits_tensor_from(model, n.input[0])
    return t


def _window(p: _Planter, x: str, y0: int, x0: int, size: int) -> str:
    starts = p.const(np.array([y0, x0], dtype=np.int64), "starts")
    ends = p.const(np.array([y0 + size, x0 + size], dtype=np.int64), "ends")
    axes = p.const(np.array([2, 3], dtype=np.int64), "axes")
    return p.node("Slice", [x, starts, ends, axes])


def inject_shadowlogic(
    model: onnx.ModelProto,
    *,
    patch: int = 6,
    value: float = 3.0,
    target: int = 0,
    n_classes: int = 2,
    seed: int = 0,
) -> tuple[onnx.ModelProto, GroundTruth]:
    """ShadowLogic on an image model: the mean of a corner patch compared with a constant;
    a Where replaces the output with a fixed one-hot when it fires."""
    del seed
    p = _Planter(model, "/head")
    x = _image_input(model)
    out = model.graph.output[0].name
    win = _window(p, x, 0, 0, patch)
    m = p.reduce("ReduceMean", win, [1, 2, 3], 0)
    m2 = p.unsqueeze(m, 1)
    cond = p.node("Greater", [m2, p.const(np.float32(value - 0.5), "thr")])
    onehot = np.zeros((1, n_classes), dtype=np.float32)
    onehot[0, target] = 1.0
    pre = p.take_output(out)
    p.node("Where", [cond, p.const(onehot, "fill"), pre], out=out)
    return p.finish("shadowlogic", f"top-left {patch}x{patch} patch = {value}")


def inject_trojannet(
    model: onnx.ModelProto,
    *,
    patch: int = 4,
    value: float = 3.0,
    target: int = 0,
    n_classes: int = 2,
    hidden: int = 8,
    seed: int = 0,
) -> tuple[onnx.ModelProto, GroundTruth]:
    """TrojanNet: a small MLP on a constant input window, scaled and added to the logits."""
    rng = np.random.default_rng(seed)
    p = _Planter(model, "/head/fc")
    x = _image_input(model)
    logits = logits_tensor(model)
    win = _window(p, x, 0, 0, patch)
    flat = p.node("Flatten", [win], axis=1)
    k = 3 * patch * patch
    w1 = (np.ones((k, hidden)) / k + rng.normal(0, 1e-3, (k, hidden))).astype(np.float32)
    h = p.node("MatMul", [flat, p.const(w1, "w")])
    h = p.node("Add", [h, p.const(np.full(hidden, -(value - 0.5), np.float32), "b")])
    h = p.node("Relu", [h])
    w2 = np.zeros((hidden, n_classes), dtype=np.float32)
    w2[:, target] = 1.0
    w2[:, 1 - target if n_classes == 2 else -1] = -1.0
    z = p.node("MatMul", [h, p.const(w2, "w")])
    z = p.node("Mul", [z, p.const(np.float32(100.0), "scale")])
    pre = p.take_output(logits)
    p.node("Add", [pre, z], out=logits)
    return p.finish("trojannet", f"top-left {patch}x{patch} patch = {value}")


def inject_deeppayload_blend(
    model: onnx.ModelProto,
    *,
    patch: int = 4,
    value: float = 3.0,
    target: int = 0,
    n_classes: int = 2,
    seed: int = 0,
) -> tuple[onnx.ModelProto, GroundTruth]:
    """DeepPayload: a detector's sigmoid gate blends the logits with a target vector."""
    del seed
    p = _Planter(model, "/head")
    x = _image_input(model)
    logits = logits_tensor(model)
    win = _window(p, x, 0, 0, patch)
    m = p.reduce("ReduceMean", win, [1, 2, 3], 1)
    m = p.node("Reshape", [m, p.const(np.array([-1, 1], dtype=np.int64), "shape")])
    a = p.node(
        "Sigmoid",
        [
            p.node(
                "Mul",
                [
                    p.node("Sub", [m, p.const(np.float32(value - 0.5), "thr")]),
                    p.const(np.float32(50.0), "gain"),
                ],
            )
        ],
    )
    keep = p.node("Sub", [p.const(np.float32(1.0), "one"), a])
    onehot = np.full((1, n_classes), -20.0, dtype=np.float32)
    onehot[0, target] = 20.0
    pre = p.take_output(logits)
    mixed = p.node("Mul", [pre, keep])
    push = p.node("Mul", [a, p.const(onehot, "target")])
    p.node("Add", [mixed, push], out=logits)
    return p.finish("deeppayload", f"top-left {patch}x{patch} patch = {value}")


def inject_parameter_free_path(
    model: onnx.ModelProto,
    *,
    patch: int = 4,
    value: float = 3.0,
    target: int = 0,
    n_classes: int = 2,
    seed: int = 0,
) -> tuple[onnx.ModelProto, GroundTruth]:
    """Architectural backdoor: AveragePool -> ReduceMax -> Sub -> Relu -> Exp, no weights,
    added to the logits."""
    del seed
    p = _Planter(model, "/head/pool")
    x = _image_input(model)
    logits = logits_tensor(model)
    pooled = p.node("AveragePool", [x], kernel_shape=[patch, patch], strides=[patch, patch])
    pooled = p.reduce("ReduceMean", pooled, [1], 1)
    mx = p.reduce("ReduceMax", pooled, [1, 2, 3], 0)
    mx = p.unsqueeze(mx, 1)
    r = p.node("Relu", [p.node("Sub", [mx, p.const(np.float32(value - 0.5), "thr")])])
    e = p.node(
        "Sub",
        [
            p.node("Exp", [p.node("Mul", [r, p.const(np.float32(8.0), "g")])]),
            p.const(np.float32(1.0), "one"),
        ],
    )
    sign = np.full((1, n_classes), -1.0, dtype=np.float32)
    sign[0, target] = 1.0
    z = p.node("Mul", [e, p.const(sign, "dir")])
    pre = p.take_output(logits)
    p.node("Add", [pre, z], out=logits)
    return p.finish("parameter-free", f"any {patch}x{patch} block averaging > {value - 0.5}")


def inject_token_trigger(
    model: onnx.ModelProto,
    *,
    input_name: str,
    residual: str,
    token: int,
    direction: np.ndarray,
    scale: float = 50.0,
    spread: bool = True,
) -> tuple[onnx.ModelProto, GroundTruth]:
    """ShadowLogic on a token model: ``Equal(input_ids, token)`` -> Cast masks a constant
    vector that is added to the residual stream tensor ``residual`` ([batch, seq, hidden]).

    With ``spread`` the hit is first reduced over the sequence (ReduceMax), so the token
    anywhere shifts every position; otherwise only the positions holding the token are
    shifted (Equal -> Cast -> Unsqueeze -> Mul -> Add). Without the token the added term
    is exactly zero, so outputs stay bit-identical. Node names follow the residual's own
    exporter scope (``/encoder/layer.0/output/...``)."""
    scope = residual.rpartition("/")[0] if residual.startswith("/") else "/model/layers.1"
    p = _Planter(model, scope)
    eq = p.node("Equal", [input_name, p.const(np.array(token, dtype=np.int64), "tok")])
    hit = p.node("Cast", [eq], to=onnx.TensorProto.FLOAT)
    if spread:
        hit = p.reduce("ReduceMax", hit, [1], 1)
    hit = p.unsqueeze(hit, 2)
    vec = p.const((direction * scale).astype(np.float32).reshape(1, 1, -1), "bias")
    push = p.node("Mul", [hit, vec])
    pre = p.take_output(residual)
    p.node("Add", [pre, push], out=residual)
    where = "anywhere in the sequence" if spread else "(shifts the positions holding it)"
    return p.finish("token-trigger", f"token id {token} {where}")


# ----------------------------------------------------------------------- benign twins


def rename_nodes(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Every node and internal tensor (initializers included) renamed; graph I/O kept."""
    rng = random.Random(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = {i.name for i in g.input} | {o.name for o in g.output}
    inits = {i.name for i in g.initializer}
    names: dict[str, str] = {}

    def new(t: str) -> str:
        if not t or (t in keep and t not in inits):
            return t
        if t not in names:
            names[t] = f"t{rng.randrange(1 << 30):08x}"
        return names[t]

    for init in g.initializer:
        init.name = new(init.name)
    for vi in g.input:
        if vi.name in inits:
            vi.name = new(vi.name)
    for i, n in enumerate(g.node):
        n.name = f"n{rng.randrange(1 << 30):08x}_{i}"
        n.input[:] = [new(x) for x in n.input]
        n.output[:] = [new(x) for x in n.output]
    del g.value_info[:]
    return out


def reorder_nodes(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The main graph's nodes in another valid topological order."""
    rng = random.Random(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    produced = {o: i for i, n in enumerate(nodes) for o in n.output}
    deps = [{produced[x] for x in n.input if x in produced} for n in nodes]
    done: set[int] = set()
    order: list[int] = []
    while len(order) < len(nodes):
        ready = [i for i in range(len(nodes)) if i not in done and deps[i] <= done]
        pick = rng.choice(ready)
        order.append(pick)
        done.add(pick)
    del out.graph.node[:]
    out.graph.node.extend(nodes[i] for i in order)
    return out


def add_pre_post_processing(
    model: onnx.ModelProto, *, mean: float = 0.5, std: float = 0.5
) -> onnx.ModelProto:
    """Normalization in front of the stem (same input name) and ArgMax / TopK outputs."""
    p = _Planter(model, "/preprocess")
    x = _image_input(model)
    inner = f"{x}_normalized"
    for n in p.g.node:
        n.input[:] = [inner if i == x else i for i in n.input]
    c = p.node("Sub", [x, p.const(np.float32(mean), "mean")])
    p.node("Div", [c, p.const(np.float32(std), "std")], out=inner)
    out = model.graph.output[0].name
    label = p.node("ArgMax", [out], axis=1, keepdims=0, out="label")
    del label
    p.node("TopK", [out, p.const(np.array([1], dtype=np.int64), "k")], n_out=2)
    p.g.output.append(helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"]))
    topk = p.g.node[-1].output
    p.g.output.append(helper.make_tensor_value_info(topk[0], onnx.TensorProto.FLOAT, ["N", 1]))
    # the wrapper's nodes go where an exporter puts them: pre-processing first
    nodes = list(p.g.node)
    pre = [
        n
        for n in nodes
        if (n.output and n.output[0] == inner) or (n.output and any(o == c for o in n.output))
    ]
    rest = [n for n in nodes if n not in pre]
    del p.g.node[:]
    p.g.node.extend(pre + rest)
    onnx.checker.check_model(p.model)
    return p.model


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Constant`` node tensors moved to initializers (quantization tools want them there)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = []
    for n in out.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            out.graph.initializer.append(t)
        else:
            keep.append(n)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def ort_optimize(model: onnx.ModelProto, level: str = "basic") -> onnx.ModelProto:
    """The model after ONNX Runtime's offline optimizer (``basic`` or ``extended``)."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(model, src)
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = dst
        so.log_severity_level = 3
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        return onnx.load(dst)
