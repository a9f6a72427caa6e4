"""Graph backdoors the graph tests plant themselves, from the papers' descriptions, never
with the scanner's red-team planters (a detector is not tested with the planter written
for it). Each fires on an input of -3 over a window the planters do not use (the
bottom-right corner, a window inside the image) and is an exact no-op otherwise:

* :func:`override_output` (ShadowLogic): a window's mean below a threshold makes a
  ``Where`` replace the model's output with a fixed one;
* :func:`window_mlp` (TrojanNet): a small MLP on a window, its output added to the logits;
* :func:`gated_blend` (DeepPayload): a sigmoid gate on a window's maximum blends the
  logits with a target vector;
* :func:`pooled_spike` (a weightless architectural backdoor): max pooling of the negated
  image, minimum over channels, maximum over space, through ``Exp`` into the logits;
* :func:`token_shift`: ``Equal(ids, token)`` adds a vector to a residual stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

TRIGGER = -3.0
BIG = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Injected:
    nodes: tuple[str, ...]
    """Names of the added nodes."""
    merge_node: str
    """The node that joins the branch to the model's own computation."""
    fire: Callable[[np.ndarray], np.ndarray]
    """A copy of an input with the trigger written in."""


class _Builder:
    def __init__(self, model: onnx.ModelProto, scope: str) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.scope = scope
        self.names: list[str] = []

    @property
    def opset(self) -> int:
        return next(o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx"))

    def const(self, value: object, dtype: type = np.float32) -> str:
        name = f"{self.scope}/c{len(self.model.graph.initializer)}"
        self.model.graph.initializer.append(
            numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        )
        return name

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        taken = {n.name for n in self.model.graph.node}
        k = len(self.names)
        while f"{self.scope}/{op_type}_{k}" in taken:
            k += 1
        name = f"{self.scope}/{op_type}_{k}"
        output = out or name + "_output_0"
        self.model.graph.node.append(
            helper.make_node(op_type, inputs, [output], name=name, **attrs)
        )
        self.names.append(name)
        return output

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int) -> str:
        if self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13):
            return self.op(op_type, [x, self.ints(*axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)

    def unsqueeze(self, x: str, axis: int) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axis)])
        return self.op("Unsqueeze", [x], axes=[axis])

    def detach(self, tensor: str) -> str:
        """Give ``tensor``'s producer a new output name; the caller then writes ``tensor``
        (graph outputs keep their names)."""
        moved = tensor + "_inner"
        for node in self.model.graph.node:
            node.output[:] = [moved if o == tensor else o for o in node.output]
        return moved

    def done(self, fire: Callable[[np.ndarray], np.ndarray]) -> tuple[onnx.ModelProto, Injected]:
        _topological(self.model.graph)
        onnx.checker.check_model(self.model)
        return self.model, Injected(tuple(self.names), self.names[-1], fire)


def _topological(graph: onnx.GraphProto) -> None:
    """Kahn's algorithm, keeping the file order among ready nodes."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    waiting = [{producer[x] for x in n.input if x in producer} for n in nodes]
    readers: dict[int, list[int]] = {}
    for i, deps in enumerate(waiting):
        for d in deps:
            readers.setdefault(d, []).append(i)
    ready = sorted(i for i, deps in enumerate(waiting) if not deps)
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for r in readers.get(i, []):
            waiting[r].discard(i)
            if not waiting[r]:
                ready.append(r)
        ready.sort()
    assert len(order) == len(nodes), "the graph has a cycle"
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _image(model: onnx.ModelProto) -> str:
    stored = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in stored)


def logits(model: onnx.ModelProto) -> str:
    """The tensor a final Softmax reads, else the first output."""
    out = model.graph.output[0].name
    producer = {o: n for n in model.graph.node for o in n.output}
    while out in producer and producer[out].op_type in ("Softmax", "Identity"):
        out = producer[out].input[0]
    return out


def _corner(b: _Builder, size: int) -> str:
    """The bottom-right ``size`` x ``size`` window of the image, all channels."""
    return b.op("Slice", [_image(b.model), b.ints(-size, -size), b.ints(BIG, BIG), b.ints(2, 3)])


def _fire_corner(size: int) -> Callable[[np.ndarray], np.ndarray]:
    def fire(x: np.ndarray) -> np.ndarray:
        y = x.copy()
        y[..., -size:, -size:] = TRIGGER
        return y

    return fire


def override_output(
    model: onnx.ModelProto, target: int = 0, n_classes: int = 2
) -> tuple[onnx.ModelProto, Injected]:
    b = _Builder(model, "/head/gate")
    mean = b.reduce("ReduceMean", _corner(b, 5), [1, 2, 3], 0)
    cond = b.op("Less", [b.unsqueeze(mean, 1), b.const(TRIGGER + 0.5)])
    fixed = np.zeros((1, n_classes), np.float32)
    fixed[0, target] = 1.0
    out = model.graph.output[0].name
    b.op("Where", [cond, b.const(fixed), b.detach(out)], out=out)
    return b.done(_fire_corner(5))


def _centre(b: _Builder, y: int, x: int, size: int) -> str:
    return b.op("Slice", [_image(b.model), b.ints(y, x), b.ints(y + size, x + size), b.ints(2, 3)])


def _fire_centre(y: int, x: int, size: int) -> Callable[[np.ndarray], np.ndarray]:
    def fire(img: np.ndarray) -> np.ndarray:
        out = img.copy()
        out[..., y : y + size, x : x + size] = TRIGGER
        return out

    return fire


def window_mlp(
    model: onnx.ModelProto, target: int = 0, n_classes: int = 2, seed: int = 0
) -> tuple[onnx.ModelProto, Injected]:
    rng = np.random.default_rng(seed)
    b = _Builder(model, "/head/mlp")
    flat = b.op("Flatten", [_centre(b, 8, 10, 4)], axis=1)
    k, hidden = 3 * 4 * 4, 6
    w1 = -np.ones((k, hidden)) / k * rng.uniform(0.9, 1.1, hidden)
    h = b.op("MatMul", [flat, b.const(w1)])
    h = b.op("Relu", [b.op("Add", [h, b.const(np.full(hidden, TRIGGER + 0.5))])])
    w2 = np.full((hidden, n_classes), -1.0)
    w2[:, target] = 1.0
    z = b.op("Mul", [b.op("MatMul", [h, b.const(w2)]), b.const(60.0)])
    out = logits(model)
    b.op("Add", [b.detach(out), z], out=out)
    return b.done(_fire_centre(8, 10, 4))


def gated_blend(
    model: onnx.ModelProto, target: int = 0, n_classes: int = 2
) -> tuple[onnx.ModelProto, Injected]:
    b = _Builder(model, "/head/blend")
    top = b.reduce("ReduceMax", _corner(b, 6), [1, 2, 3], 0)
    top = b.unsqueeze(top, 1)
    gate = b.op(
        "Sigmoid", [b.op("Mul", [b.op("Sub", [b.const(TRIGGER + 0.5), top]), b.const(40.0)])]
    )
    keep = b.op("Sub", [b.const(1.0), gate])
    vector = np.full((1, n_classes), -15.0)
    vector[0, target] = 15.0
    out = logits(model)
    mixed = b.op("Mul", [b.detach(out), keep])
    b.op("Add", [mixed, b.op("Mul", [gate, b.const(vector)])], out=out)
    return b.done(_fire_corner(6))


def pooled_spike(
    model: onnx.ModelProto, target: int = 0, n_classes: int = 2
) -> tuple[onnx.ModelProto, Injected]:
    b = _Builder(model, "/head/pool")
    neg = b.op("Neg", [_image(b.model)])
    pooled = b.op("MaxPool", [neg], kernel_shape=[3, 3], strides=[3, 3])
    low = b.reduce("ReduceMin", pooled, [1], 1)
    peak = b.unsqueeze(b.reduce("ReduceMax", low, [1, 2, 3], 0), 1)
    over = b.op("Relu", [b.op("Sub", [peak, b.const(-TRIGGER - 0.5)])])
    spike = b.op("Sub", [b.op("Exp", [b.op("Mul", [over, b.const(10.0)])]), b.const(1.0)])
    direction = np.full((1, n_classes), -1.0)
    direction[0, target] = 1.0
    out = logits(model)
    b.op("Add", [b.detach(out), b.op("Mul", [spike, b.const(direction)])], out=out)
    # the bottom-right corner holds a whole 3x3 pooling window (48 x 192 images)
    return b.done(_fire_corner(6))


def token_shift(
    model: onnx.ModelProto,
    *,
    input_name: str,
    residual: str,
    token: int,
    direction: np.ndarray,
    scale: float = 40.0,
    whole_sequence: bool = True,
) -> tuple[onnx.ModelProto, Injected]:
    """``scale`` x ``direction`` added to the residual stream ``[batch, seq, hidden]`` at
    the positions holding ``token`` (or everywhere when it occurs anywhere), in the
    residual's own exporter scope."""
    scope = residual.rpartition("/")[0] if residual.startswith("/") else "/model"
    b = _Builder(model, scope)
    hit = b.op("Cast", [b.op("Equal", [input_name, b.const(token, np.int64)])], to=1)
    if whole_sequence:
        hit = b.reduce("ReduceMax", hit, [1], 1)
    push = b.op("Mul", [b.unsqueeze(hit, 2), b.const(direction.reshape(1, 1, -1) * scale)])
    b.op("Add", [b.detach(residual), push], out=residual)

    def fire(ids: np.ndarray) -> np.ndarray:
        out = ids.copy()
        out[:, min(5, ids.shape[1] - 1)] = token
        return out

    return b.done(fire)
