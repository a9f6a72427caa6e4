"""Control flow and products that constant values decide.

* ``If`` whose condition is a constant runs one branch, always: the branch's nodes take
  the If's place (ONNX Runtime and graph builders inline such branches; exporters leave
  them when the condition came from a shape that later folded).
* ``x * 0`` for an integer ``x`` of statically known shape is a tensor of zeros (exact
  for integers; for floats ``0 * inf`` is NaN, so floats are left alone). Exporters use
  it to keep an otherwise unused input (``sr * 0`` added to an output).
"""

from __future__ import annotations

import numpy as np
import onnx

from scanner.graph.canonical import const_from_array
from scanner.graph.rewrites import _Editor
from scanner.graph.simplify import absorb_unread

_INTEGER = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
}


def inline_constant_ifs(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "If" or n.id not in g.nodes or not n.inputs or n.scope.startswith("function:"):
            continue
        cond = ed.cval(n.inputs[0])
        if cond is None or cond.size != 1:
            continue
        want = "then_branch" if bool(np.ravel(cond)[0]) else "else_branch"
        chosen = next((b for b in n.bodies if b.endswith("/" + want)), None)
        if chosen is None or chosen not in g.bodies:
            continue
        dropped = [b for b in n.bodies if b != chosen]
        for m in list(g.nodes.values()):
            if m.scope == chosen:
                m.scope = n.scope
            elif any(m.scope == b or m.scope.startswith(b + "/") for b in dropped):
                ed.remove(m)
        body = g.bodies.pop(chosen)
        for b in dropped:
            g.bodies.pop(b, None)
        for k in [k for k in g.bodies if any(k.startswith(b + "/") for b in dropped)]:
            g.bodies.pop(k)
        ed.remove(n)
        for out, src in zip(n.outputs, body.outputs, strict=False):
            if out:
                ed.alias(out, src)
        g.absorbed.update(ed.csrc(n.inputs[0]))
        ed.counts["inlined If with a constant condition"] += 1
        g.index()
        # constants only the branch never taken read parametrized nothing that runs
        absorb_unread(g)


def fold_integer_zero_products(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Mul" or len(n.inputs) != 2 or n.id not in g.nodes:
            continue
        for slot in (0, 1):
            c, x = n.inputs[slot], n.inputs[1 - slot]
            v = ed.cval(c)
            if v is None or v.dtype.kind not in "iu" or np.any(v != 0) or x in g.consts:
                continue
            if g.elem_types.get(x) not in _INTEGER:
                continue
            shape = ed.shapes.shape(x)
            if shape is None or any(d is None for d in shape):
                continue
            out_shape = np.broadcast_shapes(tuple(shape), v.shape)  # type: ignore[arg-type]
            g.consts[n.outputs[0]] = const_from_array(
                np.zeros(out_shape, dtype=v.dtype), ed.csrc(c), "zero product"
            )
            ed.remove(n)
            ed.counts["integer products with zero as constants"] += 1
            break
    g.index()
