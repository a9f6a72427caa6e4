"""The graph editor the canonicalizing rewrites share: replace, remove and add nodes and
constants of a :class:`CanonicalGraph`, and count what each rewrite did."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx

from scanner.graph.canonical import (
    COMMUTATIVE,  # noqa: F401  (re-exported)
    CanonicalGraph,
    Node,
    const_from_array,
)

NON_FOLDABLE = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "DynamicQuantizeLinear",
}
"""Never evaluated even on constant inputs. (``Shape`` / ``Size`` of a constant are
constants: exporters compute padding amounts that way, and optimizers fold them.)"""
_BOOL = onnx.TensorProto.BOOL
_FIXED_OUTPUT_TYPE = {
    **dict.fromkeys(
        (
            "Not",
            "And",
            "Or",
            "Xor",
            "Equal",
            "Less",
            "Greater",
            "LessOrEqual",
            "GreaterOrEqual",
            "IsNaN",
            "IsInf",
        ),
        _BOOL,
    ),
    "Shape": onnx.TensorProto.INT64,
    "Size": onnx.TensorProto.INT64,
}
"""Operators whose output element type never depends on their inputs: a Cast of their
output to that type is a no-op in any scope, even where shape inference says nothing."""
_INT64_MAX = np.iinfo(np.int64).max
_AXES_TO_INPUT = {
    "Squeeze",
    "Unsqueeze",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
}
_ACTIVATIONS = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Clip", "Elu", "Softplus"}


class _Editor:
    def __init__(self, g: CanonicalGraph) -> None:
        self.g = g
        self.counts: Counter[str] = Counter()
        self.next_id = max(g.nodes, default=-1) + 1
        self.next_tensor = 0
        from scanner.graph.shapes import ShapeOracle

        self.shapes = ShapeOracle(g)
        """Static shapes; rewrites keep every tensor's shape, so entries stay valid."""

    def fresh(self, scope: str, hint: str) -> str:
        self.next_tensor += 1
        base = f"~{hint}:{self.next_tensor}"
        return f"{scope}::{base}" if scope else base

    def const(
        self,
        scope: str,
        value: np.ndarray,
        sources: tuple[str, ...] = (),
        derivation: str = "canonical",
        atol: np.ndarray | None = None,
    ) -> str:
        tid = self.fresh(scope, "const")
        self.g.consts[tid] = const_from_array(np.asarray(value), sources, derivation, atol)
        return tid

    def node(
        self,
        like: Node,
        op: str,
        inputs: list[str],
        outputs: list[str] | None = None,
        attrs: dict[str, Any] | None = None,
        suffix: str = "",
    ) -> Node:
        outs = outputs if outputs is not None else [self.fresh(like.scope, op)]
        n = Node(
            self.next_id,
            like.name + suffix,
            op,
            dict(attrs or {}),
            list(inputs),
            outs,
            like.scope,
            like.origin,
        )
        self.next_id += 1
        self.g.nodes[n.id] = n
        return n

    def remove(self, n: Node) -> None:
        self.g.nodes.pop(n.id, None)

    def drop_identity(self, n: Node, what: str) -> None:
        """Remove ``n``, proven to compute its first input unchanged; the constants that
        parametrized it are absorbed."""
        self.remove(n)
        self.alias(n.outputs[0], n.inputs[0])
        self.g.absorbed.update(self.csrc(*n.inputs[1:]))
        self.counts[what] += 1
        self.g.index()

    def alias(self, old: str, new: str) -> None:
        """Every reader of ``old`` reads ``new`` instead."""
        g = self.g
        for n in g.nodes.values():
            if old in n.inputs:
                n.inputs = [new if i == old else i for i in n.inputs]
            if old in n.free:
                n.free = tuple(new if i == old else i for i in n.free)
        g.outputs = [new if o == old else o for o in g.outputs]
        for body in g.bodies.values():
            body.outputs = [new if o == old else o for o in body.outputs]

    def users(self, tensor: str) -> list[tuple[int, int]]:
        return self.g.consumers.get(tensor, [])

    def sole_user(self, tensor: str) -> Node | None:
        users = self.users(tensor)
        if len(users) != 1 or tensor in self.g.outputs or users[0][1] < 0:
            return None
        return self.g.nodes.get(users[0][0])

    def cval(self, tensor: str) -> np.ndarray | None:
        c = self.g.consts.get(tensor)
        return None if c is None else c.value()

    def catol(self, tensor: str) -> np.ndarray | None:
        c = self.g.consts.get(tensor)
        return None if c is None else c.atol

    def csrc(self, *tensors: str) -> tuple[str, ...]:
        out: list[str] = []
        for t in tensors:
            c = self.g.consts.get(t)
            if c is not None:
                out.extend(s for s in c.sources if s not in out)
        return tuple(out)
