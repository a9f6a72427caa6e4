"""Transposes moved towards the outputs, merged and cancelled.

Optimizers move transposes (ONNX Runtime's transpose optimizer pushes them through
Slice / Squeeze / elementwise ops until they cancel or reach an operator that needs a
layout); exporters leave them where the source code put them. Canonically every
transpose sinks past the operators it commutes with, two in a row become one, and one
that keeps the order is dropped:

* ``Slice(T(x, p), axes=a)`` is ``T(Slice(x, axes=p[a]), p)``;
* ``Squeeze(T(x, p), a)`` is ``T(Squeeze(x, p[a]), p')``, ``p'`` being ``p`` without the
  squeezed axes, renumbered;
* ``Unsqueeze(T(x, p), a)`` is ``T(Unsqueeze(x, new trailing axes), p'')``;
* a unary elementwise op commutes; a binary one with a constant operand commutes with
  that constant transposed by ``p``'s inverse (scalars as they are);
* ``Softmax`` / ``LogSoftmax`` (opset 13 form) and reductions with ``keepdims`` move
  their axes along ``p``;
* ``T(T(x, p), q)`` is ``T(x, p[q])``; ``T(x, identity)`` is ``x``.

A transpose read by several operators sinks only when every reader lets it (it is then
copied past each); otherwise it stays, and so does everything after it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scanner.graph.canonical import Node
from scanner.graph.rewrites import _Editor, _moved_atol, _set_slice, _slice_params
from scanner.graph.shapes import ELEMENTWISE_BINARY, ELEMENTWISE_UNARY

_UNARY = ELEMENTWISE_UNARY
_BINARY = ELEMENTWISE_BINARY
_SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}
_REDUCE = {
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
    "ReduceLogSumExp",
}


def _perm(n: Node) -> list[int] | None:
    p = n.attrs.get("perm")
    return [int(x) for x in p] if p is not None else None


def sink_transposes(ed: _Editor) -> None:
    g = ed.g
    changed = True
    rounds = 0
    while changed and rounds < 512:
        changed = False
        rounds += 1
        for t in list(g.nodes.values()):
            if t.op != "Transpose" or t.id not in g.nodes:
                continue
            p = _perm(t)
            if p is None:
                continue
            if p == list(range(len(p))):
                if t.outputs[0] in g.outputs and t.inputs[0] in g.inputs:
                    continue
                ed.remove(t)
                ed.alias(t.outputs[0], t.inputs[0])
                ed.counts["removed Transpose keeping the order"] += 1
                g.index()
                changed = True
                continue
            y = t.outputs[0]
            if y in g.outputs or any(y in b.outputs for b in g.bodies.values()):
                continue
            users = [g.nodes[c] for c, s in g.consumers.get(y, ()) if s >= 0]
            if not users or len(users) != len(g.consumers.get(y, ())):
                continue
            plans = [_plan(ed, u, y, p) for u in users]
            if any(plan is None for plan in plans):
                continue
            for plan in plans:
                plan()  # type: ignore[misc]
            ed.remove(t)
            # the readers now read the transpose's input
            for u in users:
                u.inputs = [t.inputs[0] if i == y else i for i in u.inputs]
            ed.counts["moved Transpose towards the outputs"] += 1
            g.index()
            changed = True


def _plan(ed: _Editor, u: Node, y: str, p: list[int]) -> Callable[[], None] | None:
    """A function that rewrites reader ``u`` of ``y = T(x, p)`` to read ``x`` and puts
    the transpose after it; ``None`` when ``u`` does not commute with it."""
    g = ed.g
    rank = len(p)
    if u.op == "Transpose":
        q = _perm(u)
        if q is None or len(q) != rank:
            return None

        def merge() -> None:
            u.attrs["perm"] = [p[i] for i in q]

        return merge
    if len(u.outputs) != 1 or not u.outputs[0]:
        return None
    if u.op in _UNARY and u.inputs[0] == y and all(i in g.consts for i in u.inputs[1:] if i):
        return lambda: _after(ed, u, p)
    if u.op == "Clip" and u.inputs[0] == y and all(not i or i in g.consts for i in u.inputs[1:]):
        return lambda: _after(ed, u, p)
    if u.op in _BINARY and len(u.inputs) == 2:
        slot = u.inputs.index(y)
        other = u.inputs[1 - slot]
        if other == y:
            return lambda: _after(ed, u, p)
        c = ed.cval(other)
        if c is None or c.ndim > rank:
            return None
        inv = list(np.argsort(p))

        def binary() -> None:
            full = c.reshape((1,) * (rank - c.ndim) + c.shape) if c.ndim else c
            moved = np.ascontiguousarray(np.transpose(full, inv)) if full.ndim else full
            atol = _moved_atol(
                ed.catol(other), full.shape, lambda a: np.transpose(a, inv) if a.ndim else a
            )
            new = ed.const(u.scope, moved, ed.csrc(other), "transpose", atol)
            u.inputs[1 - slot] = new
            _after(ed, u, p)

        return binary
    if u.op == "Slice" and u.inputs[0] == y:
        params = _slice_params(ed, u)
        if params is None:
            return None
        if any(not -rank <= a < rank for a, *_ in params):
            return None

        def sliced() -> None:
            moved = [(p[a % rank], s, e, t) for a, s, e, t in params]
            _set_slice(ed, u, moved, ed.csrc(*u.inputs[1:]))
            _after(ed, u, p)

        return sliced
    if u.op == "Squeeze" and u.inputs[0] == y and len(u.inputs) == 2:
        axes = ed.cval(u.inputs[1])
        if axes is None:
            return None
        squeezed = sorted({int(a) % rank for a in np.ravel(axes)})
        src = [p[a] for a in squeezed]
        kept = [p[i] for i in range(rank) if i not in squeezed]
        order = sorted(kept)
        q = [order.index(k) for k in kept]

        def squeeze() -> None:
            u.inputs[1] = ed.const(
                u.scope, np.asarray(sorted(src), dtype=np.int64), ed.csrc(u.inputs[1]), "axes"
            )
            _after(ed, u, q)

        return squeeze
    if u.op == "Unsqueeze" and u.inputs[0] == y and len(u.inputs) == 2:
        axes = ed.cval(u.inputs[1])
        if axes is None:
            return None
        out_rank = rank + int(np.size(axes))
        new = sorted({int(a) % out_rank for a in np.ravel(axes)})
        if len(new) != np.size(axes):
            return None
        q: list[int] = []
        k_old, k_new = 0, rank
        for pos in range(out_rank):
            if pos in new:
                q.append(k_new)
                k_new += 1
            else:
                q.append(p[k_old])
                k_old += 1

        def unsqueeze() -> None:
            u.inputs[1] = ed.const(
                u.scope,
                np.arange(rank, out_rank, dtype=np.int64),
                ed.csrc(u.inputs[1]),
                "axes",
            )
            _after(ed, u, q)

        return unsqueeze
    if u.op in _SOFTMAX and u.inputs[0] == y:
        axis = int(u.attrs.get("axis", -1)) % rank

        def softmax() -> None:
            u.attrs["axis"] = p[axis]
            _after(ed, u, p)

        return softmax
    if u.op in _REDUCE and u.inputs[0] == y and int(u.attrs.get("keepdims", 1)) == 1:
        if len(u.inputs) < 2 or not u.inputs[1]:
            return None  # every axis, or none (noop_with_empty_axes): leave it
        axes = ed.cval(u.inputs[1])
        if axes is None:
            return None

        def reduce() -> None:
            moved = sorted(p[int(a) % rank] for a in np.ravel(axes))
            u.inputs[1] = ed.const(
                u.scope, np.asarray(moved, dtype=np.int64), ed.csrc(u.inputs[1]), "axes"
            )
            _after(ed, u, p)

        return reduce
    return None


def _after(ed: _Editor, u: Node, p: list[int]) -> None:
    """Put ``Transpose(perm=p)`` on ``u``'s output (``u`` keeps computing the rest)."""
    out = u.outputs[0]
    inner = ed.fresh(u.scope, u.op)
    u.outputs = [inner]
    ed.node(u, "Transpose", [inner], [out], {"perm": list(p)}, "/moved")
