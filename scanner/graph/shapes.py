"""Static shapes of canonical-graph tensors, as far as they follow from the graph.

ONNX shape inference runs on the stored model, where ONNX Runtime's fused operators are
opaque: after the canonical form splits them (``FusedConv`` into ``Conv`` + activation)
the same tensor would have a known shape in one graph and not in the other, and rewrites
that need a length would apply to one side only. This module recomputes shapes on the
canonical graph itself, from constants, declared input shapes and shape inference's
findings, through the operators whose output shape follows from their inputs'. A
dimension is ``None`` when unknown; a whole shape is ``None`` when the rank is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scanner.graph.canonical import CanonicalGraph

Shape = tuple[int | None, ...]

ELEMENTWISE_UNARY = frozenset(
    {
        "Relu",
        "Sigmoid",
        "Tanh",
        "Clip",
        "HardSigmoid",
        "HardSwish",
        "LeakyRelu",
        "Neg",
        "Abs",
        "Sqrt",
        "Exp",
        "Log",
        "Erf",
        "Cast",
        "Identity",
        "Softplus",
        "Softsign",
        "Elu",
        "Selu",
        "Not",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "IsNaN",
        "IsInf",
        "Sin",
        "Cos",
        "com.microsoft::QuickGelu",
        "com.microsoft::Gelu",
        "com.microsoft::FastGelu",
    }
)
"""Operators computing each element from the same element of one tensor (other inputs,
if any, are constant bounds or parameters of the function)."""
ELEMENTWISE_BINARY = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Max",
        "Min",
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "And",
        "Or",
        "Xor",
        "Mod",
    }
)
"""Elementwise operators of two tensors (numpy broadcasting)."""
_SAME_SHAPE = ELEMENTWISE_UNARY | {
    "Softmax",
    "LogSoftmax",
    "Dropout",
    "LayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "PRelu",
    "CumSum",
}
_BROADCAST = ELEMENTWISE_BINARY | {"Where"}


class ShapeOracle:
    """Shapes of one canonical graph; ``reset()`` after the graph changes."""

    def __init__(self, g: CanonicalGraph) -> None:
        self.g = g
        self.cache: dict[str, Shape | None] = {}

    def reset(self) -> None:
        self.cache.clear()

    def shape(self, tensor: str, depth: int = 0) -> Shape | None:
        if tensor in self.cache:
            return self.cache[tensor]
        if depth > 200:
            return self.g.shapes.get(tensor)
        derived = self._derive(tensor, depth)
        known = self.g.shapes.get(tensor)
        out = _merge(known, derived)
        self.cache[tensor] = out
        return out

    def rank(self, tensor: str) -> int | None:
        s = self.shape(tensor)
        return None if s is None else len(s)

    def dim(self, tensor: str, axis: int) -> int | None:
        s = self.shape(tensor)
        if s is None:
            return None
        if axis < 0:
            axis += len(s)
        return s[axis] if 0 <= axis < len(s) else None

    def _derive(self, tensor: str, depth: int) -> Shape | None:
        g = self.g
        c = g.consts.get(tensor)
        if c is not None:
            return tuple(c.shape)
        pid = g.producer.get(tensor)
        if pid is None:
            return None
        n = g.nodes.get(pid)
        if n is None or not n.inputs:
            return None
        if n.outputs[0] != tensor:
            return None
        sub = lambda t: self.shape(t, depth + 1) if t else None  # noqa: E731
        op = n.op
        if op in _SAME_SHAPE:
            return sub(n.inputs[0])
        if op in _BROADCAST:
            shapes = [sub(i) for i in n.inputs if i]
            return _broadcast(shapes)
        if op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
            x = sub(n.inputs[0])
            if x is None:
                return None
            channels = x[1] if len(x) > 1 else None
            if op in ("Conv", "ConvTranspose") and len(n.inputs) > 1:
                w = g.consts.get(n.inputs[1])
                if w is not None and w.shape:
                    group = int(n.attrs.get("group", 1))
                    channels = w.shape[0] if op == "Conv" else w.shape[1] * group
            return (x[0], channels, *([None] * (len(x) - 2)))
        if op in ("GlobalAveragePool", "GlobalMaxPool"):
            x = sub(n.inputs[0])
            return None if x is None else (*x[:2], *([1] * (len(x) - 2)))
        if op == "Shape":
            r = self.rank(n.inputs[0])
            if r is None:
                return None
            start = int(n.attrs.get("start", 0))
            end = int(n.attrs.get("end", r))
            return (len(range(r)[slice(start, end)]),)
        if op == "Size":
            return ()
        if op.startswith("Reduce"):
            x = sub(n.inputs[0])
            if x is None:
                return None
            axes = _ints(g, n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
            if axes is None:
                if len(n.inputs) > 1 and n.inputs[1]:
                    return None  # computed axes
                if int(n.attrs.get("noop_with_empty_axes", 0)):
                    return x
                axes = list(range(len(x)))
            drop = {a % len(x) for a in axes} if x else set()
            if int(n.attrs.get("keepdims", 1)):
                return tuple(1 if i in drop else d for i, d in enumerate(x))
            return tuple(d for i, d in enumerate(x) if i not in drop)
        if op == "Transpose":
            x = sub(n.inputs[0])
            perm = n.attrs.get("perm")
            if x is None:
                return None
            p = [int(a) for a in perm] if perm is not None else list(reversed(range(len(x))))
            return tuple(x[a] for a in p) if len(p) == len(x) else None
        if op == "Slice":
            return self._slice(n, sub(n.inputs[0]))
        if op in ("Squeeze", "Unsqueeze"):
            x = sub(n.inputs[0])
            axes = _ints(g, n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
            if x is None or axes is None:
                return None
            if op == "Squeeze":
                r = len(x)
                drop = {a % r for a in axes}
                return tuple(d for i, d in enumerate(x) if i not in drop)
            r = len(x) + len(axes)
            add = {a % r for a in axes}
            it = iter(x)
            return tuple(1 if i in add else next(it) for i in range(r))
        if op == "Concat":
            parts = [sub(i) for i in n.inputs]
            if any(p is None for p in parts) or len({len(p) for p in parts}) != 1:  # type: ignore[arg-type]
                return None
            r = len(parts[0])  # type: ignore[arg-type]
            axis = int(n.attrs.get("axis", 0)) % r
            dims = [p[axis] for p in parts]  # type: ignore[index]
            out = list(_broadcast(parts) or parts[0])  # type: ignore[arg-type]
            out[axis] = sum(dims) if all(d is not None for d in dims) else None  # type: ignore[arg-type]
            return tuple(out)
        if op == "Reshape":
            target = _ints(g, n.inputs[1]) if len(n.inputs) > 1 else None
            if target is None:
                r = self.dim(n.inputs[1], 0) if len(n.inputs) > 1 else None
                return None if r is None else (None,) * r
            x = sub(n.inputs[0])
            dims: list[int | None] = []
            for i, d in enumerate(target):
                if d == 0 and not int(n.attrs.get("allowzero", 0)):
                    dims.append(x[i] if x is not None and i < len(x) else None)
                else:
                    dims.append(None if d == -1 else d)
            if x is not None and all(d is not None for d in x) and dims.count(None) == 1:
                total = int(np.prod(x))  # type: ignore[arg-type]
                rest = int(np.prod([d for d in dims if d is not None]))
                if rest and total % rest == 0:
                    dims[dims.index(None)] = total // rest
            return tuple(dims)
        if op == "MatMul":
            a, b = sub(n.inputs[0]), sub(n.inputs[1])
            if a is None or b is None or len(a) < 2 or len(b) < 2:
                return None
            batch = _broadcast([a[:-2], b[:-2]])
            return None if batch is None else (*batch, a[-2], b[-1])
        if op == "Gather":
            x, idx = sub(n.inputs[0]), sub(n.inputs[1])
            if x is None or idx is None:
                return None
            axis = int(n.attrs.get("axis", 0)) % len(x)
            return (*x[:axis], *idx, *x[axis + 1 :])
        return None

    def _slice(self, n: object, x: Shape | None) -> Shape | None:
        from scanner.graph.canonical import Node

        assert isinstance(n, Node)
        if x is None:
            return None
        ins = n.inputs + [""] * (5 - len(n.inputs))
        starts, ends = _ints(self.g, ins[1]), _ints(self.g, ins[2])
        if starts is None or ends is None:
            return (None,) * len(x)
        axes = _ints(self.g, ins[3]) if ins[3] else list(range(len(starts)))
        steps = _ints(self.g, ins[4]) if ins[4] else [1] * len(starts)
        if axes is None or steps is None:
            return (None,) * len(x)
        out = list(x)
        for a, s, e, t in zip(axes, starts, ends, steps, strict=False):
            a %= len(x)
            out[a] = len(range(x[a])[slice(s, e, t)]) if x[a] is not None and t else None
        return tuple(out)


def _ints(g: CanonicalGraph, tensor: str) -> list[int] | None:
    c = g.consts.get(tensor)
    v = c.value() if c is not None else None
    if v is None or np.asarray(v).dtype.kind not in "iu":
        return None
    return [int(x) for x in np.ravel(v)]


def _broadcast(shapes: list[Shape | None]) -> Shape | None:
    if any(s is None for s in shapes) or not shapes:
        return None
    r = max(len(s) for s in shapes)  # type: ignore[arg-type]
    out: list[int | None] = []
    for i in range(r):
        dims = [s[len(s) - r + i] for s in shapes if len(s) - r + i >= 0]  # type: ignore[arg-type]
        big = {d for d in dims if d is not None and d != 1}
        if len(big) == 1:
            out.append(big.pop())
        elif not big and all(d == 1 for d in dims):
            out.append(1)
        else:
            out.append(None)
    return tuple(out)


def _merge(a: Shape | None, b: Shape | None) -> Shape | None:
    if a is None:
        return b
    if b is None or len(a) != len(b):
        return a
    return tuple(x if x is not None else y for x, y in zip(a, b, strict=True))
