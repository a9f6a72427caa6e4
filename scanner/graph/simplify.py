"""Arithmetic identities and statically known shapes.

* ``x * 1``, ``x / 1``, ``x + 0``, ``x - 0`` and ``x ** 1`` with a constant whose every
  element is that neutral value and that cannot widen ``x`` by broadcasting (one
  element, rank no higher than ``x``'s) are ``x`` (exporters emit ``Mul(x, 1.0)`` for a
  swish with beta 1; optimizers drop it).
* ``Shape(x)`` where shape inference knows every dimension it returns is a constant, and
  so is a constant-bounds ``Slice`` of it that only picks known dimensions (optimizers
  fold them; exporters compute reshape targets from them).

Shapes come from ONNX shape inference over the graph's declared inputs and operators
(declared intermediate shapes are discarded first, see :mod:`scanner.graph.canonical`):
the runtime checks inputs against their declared dimensions, so a dimension inferred
from them holds whenever the graph runs.
"""

from __future__ import annotations

import numpy as np
import onnx

from scanner.graph.canonical import Node
from scanner.graph.rewrites import _Editor, _slice_params
from scanner.graph.shapes import ELEMENTWISE_UNARY

_NEUTRAL = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0, "Pow": 1.0}
_RIGHT_ONLY = {"Div", "Sub", "Pow"}


def drop_neutral_operands(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        neutral = _NEUTRAL.get(n.op)
        if neutral is None or len(n.inputs) != 2 or n.id not in g.nodes:
            continue
        slots = (1,) if n.op in _RIGHT_ONLY else (1, 0)
        for slot in slots:
            c, x = n.inputs[slot], n.inputs[1 - slot]
            v = ed.cval(c)
            if v is None or x in g.consts or v.size != 1 or not np.all(v == neutral):
                continue
            x_type = g.elem_types.get(x)
            if x_type is not None and x_type != onnx.helper.np_dtype_to_tensor_dtype(v.dtype):
                continue
            if v.ndim and rank_at_least(ed, x) < v.ndim:
                continue  # a [1] constant would turn a scalar into a vector
            if n.outputs[0] in g.outputs and (x in g.inputs or x in g.consts):
                continue
            ed.remove(n)
            ed.alias(n.outputs[0], x)
            g.absorbed.update(ed.csrc(c))
            ed.counts[f"removed {n.op} by a neutral constant"] += 1
            g.index()
            break


def fold_known_shapes(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Shape" or n.id not in g.nodes or not n.inputs:
            continue
        dims = ed.shapes.shape(n.inputs[0])
        if dims is None:
            continue
        rank = len(dims)
        start = int(n.attrs.get("start", 0))
        end = int(n.attrs.get("end", rank))
        start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
        dims = dims[max(start, 0) : min(end, rank)]
        if all(d is not None for d in dims):
            g.consts[n.outputs[0]] = _shape_const(dims)
            ed.remove(n)
            ed.counts["Shape of statically known dimensions as a constant"] += 1
            continue
        for cid, slot in list(g.consumers.get(n.outputs[0], ())):
            s = g.nodes.get(cid)
            if s is None or s.op != "Slice" or slot != 0:
                continue
            params = _slice_params(ed, s)
            if params is None or len(params) != 1:
                continue
            if params[0][0] not in (0, -1) or params[0][3] != 1:
                continue
            _, lo, hi, _ = params[0]
            picked = dims[slice(lo, hi)]
            if picked and all(d is not None for d in picked):
                g.consts[s.outputs[0]] = _shape_const(picked)  # type: ignore[arg-type]
                ed.remove(s)
                g.absorbed.update(ed.csrc(*s.inputs[1:]))
                ed.counts["Shape of statically known dimensions as a constant"] += 1
    g.index()


def _shape_const(dims: tuple[int, ...]) -> object:
    from scanner.graph.canonical import const_from_array

    return const_from_array(np.asarray(dims, dtype=np.int64), (), "static shape")


_RANK_AT_LEAST = {
    "Conv": 3,
    "ConvTranspose": 3,
    "MaxPool": 3,
    "AveragePool": 3,
    "GlobalAveragePool": 3,
    "GlobalMaxPool": 3,
    "BatchNormalization": 2,
    "InstanceNormalization": 3,
    "Gemm": 2,
    "MatMul": 1,
    "LayerNormalization": 1,
    "Concat": 1,
    "Softmax": 1,
    "Split": 1,
}


def rank_at_least(ed: _Editor, tensor: str, depth: int = 0) -> int:
    """A lower bound on the rank of ``tensor`` (0 when nothing is known)."""
    g = ed.g
    rank = ed.shapes.rank(tensor)
    if rank is not None:
        return rank
    pid = g.producer.get(tensor)
    if pid is None or depth > 32:
        return 0
    n = g.nodes[pid]
    if n.op in _RANK_AT_LEAST:
        return _RANK_AT_LEAST[n.op]
    if n.op in ELEMENTWISE_UNARY or n.op in _NEUTRAL:
        return max((rank_at_least(ed, i, depth + 1) for i in n.inputs[:2] if i), default=0)
    return 0


def absorb_unread(g: object) -> None:
    """Stored tensors that no remaining node reads, directly or through a value derived
    from them, parametrized only structure a proven rewrite removed: absorbed. A tensor
    still feeding a derived value stays (its values are still compared)."""
    from scanner.graph.canonical import CanonicalGraph

    assert isinstance(g, CanonicalGraph)
    read = {i for n in g.nodes.values() for i in (*n.inputs, *n.free)}
    read.update(g.outputs)
    for b in g.bodies.values():
        read.update(b.outputs)
    live = {key for tid, c in g.consts.items() if tid in read for key in c.sources}
    for tid, c in g.consts.items():
        if tid not in read:
            g.absorbed.update(k for k in c.sources if k not in live)


def eliminate_common_subexpressions(ed: _Editor) -> None:
    """Two nodes of one scope with the same operator, attributes and inputs compute the
    same value (ONNX operators are functions of their inputs; random ones excepted).
    Small constants count as equal by value, as ONNX Runtime's constant sharing makes
    them."""
    from scanner.graph.canonical import SMALL_CONST, attr_signature, topo_order
    from scanner.graph.rewrites import NON_FOLDABLE

    g = ed.g
    scopes = {n.scope for n in g.nodes.values()}
    merged = 0
    for scope in sorted(scopes):
        seen: dict[tuple[object, ...], Node] = {}
        for n in topo_order(g, scope):
            if n.op in NON_FOLDABLE or n.bodies or n.id not in g.nodes:
                continue
            key_inputs = []
            for i in n.inputs:
                c = g.consts.get(i)
                key_inputs.append(c.signature() if c is not None and c.numel <= SMALL_CONST else i)
            key = (n.op, attr_signature(n), tuple(key_inputs), len(n.outputs))
            first = seen.get(key)
            if first is None:
                seen[key] = n
                continue
            if any(o in g.outputs for o in n.outputs if o):
                continue
            for mine, theirs in zip(n.outputs, first.outputs, strict=True):
                if mine:
                    ed.alias(mine, theirs)
            ed.remove(n)
            merged += 1
    if merged:
        ed.counts["merged identical nodes"] += merged
        # constants of a node proven equal to a kept one (equal by value when small)
        absorb_unread(g)
    g.index()


def remove_dead_nodes(ed: _Editor) -> None:
    """Nodes whose results nothing reads (no node, subgraph or graph output)."""
    g = ed.g
    removed = 0
    while True:
        g.index()
        live_outputs = set(g.outputs)
        for body in g.bodies.values():
            live_outputs.update(body.outputs)
        dead = [
            n
            for n in g.nodes.values()
            if not any(o and (g.consumers.get(o) or o in live_outputs) for o in n.outputs)
        ]
        if not dead:
            break
        for n in dead:
            ed.remove(n)
            for b in n.bodies:
                g.bodies.pop(b, None)
        removed += len(dead)
    if removed:
        g.index()
        absorb_unread(g)
        ed.counts["removed nodes nothing reads"] += removed


def reshape_inferred_dimension(ed: _Editor) -> None:
    """``Reshape(x, Concat(c1, .., d, .., cn))`` with one computed element ``d`` and
    constant others (no ``-1`` among them) is ``Reshape(x, [c1, .., -1, .., cn])``: when
    the original succeeds, ``d`` is the only value that makes the element count match,
    which is what ``-1`` computes (ONNX Runtime's reshape fusion)."""
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Reshape" or len(n.inputs) < 2 or int(n.attrs.get("allowzero", 0)):
            continue
        pid = g.producer.get(n.inputs[1])
        cat = g.nodes.get(pid) if pid is not None else None
        if cat is None or cat.op != "Concat":
            continue
        length = ed.shapes.shape(n.inputs[1])
        if length is None or len(length) != 1 or length[0] is None:
            continue
        parts: list[np.ndarray | None] = [ed.cval(i) for i in cat.inputs]
        known = [p for p in parts if p is not None]
        if len(known) != len(parts) - 1 or any(p.dtype.kind not in "iu" for p in known):
            continue
        if sum(p.size for p in known) != length[0] - 1 or any(np.any(p == -1) for p in known):
            continue
        values = [
            np.asarray(p, dtype=np.int64).ravel() if p is not None else np.asarray([-1])
            for p in parts
        ]
        src = ed.csrc(*cat.inputs)
        n.inputs = [n.inputs[0], ed.const(n.scope, np.concatenate(values), src, "reshape-infer")]
        ed.counts["Reshape dimension computed from shapes as -1"] += 1
    g.index()


def cancel_squeeze_pairs(ed: _Editor) -> None:
    """``Unsqueeze(Squeeze(y, a), a)`` is ``y`` (the Squeeze only succeeds when those axes
    are 1) and ``Squeeze(Unsqueeze(x, a), a)`` is ``x``, for the same non-negative axes."""
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op not in ("Squeeze", "Unsqueeze") or len(n.inputs) != 2 or n.id not in g.nodes:
            continue
        pid = g.producer.get(n.inputs[0])
        p = g.nodes.get(pid) if pid is not None else None
        other = "Unsqueeze" if n.op == "Squeeze" else "Squeeze"
        if p is None or p.op != other or len(p.inputs) != 2:
            continue
        a, b = ed.cval(n.inputs[1]), ed.cval(p.inputs[1])
        if a is None or b is None or np.any(a < 0) or np.any(b < 0):
            continue
        if sorted(np.ravel(a).tolist()) != sorted(np.ravel(b).tolist()):
            continue
        if n.outputs[0] in g.outputs and p.inputs[0] in g.inputs:
            continue
        ed.remove(n)
        ed.alias(n.outputs[0], p.inputs[0])
        g.absorbed.update(ed.csrc(n.inputs[1]))
        ed.counts[f"cancelled {other} -> {n.op}"] += 1
        g.index()
