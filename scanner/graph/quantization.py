"""Rewrites that collapse quantization back to the float operator it stands for
(QuantizeLinear/DequantizeLinear round trips, dynamic quantization of weights)."""

from __future__ import annotations

import numpy as np
import onnx

from scanner.graph.canonical import (
    COMMUTATIVE,  # noqa: F401  (re-exported)
    Node,
)
from scanner.graph.editor import _Editor

_QRANGE = {
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT4: (0, 15),
    onnx.TensorProto.INT4: (-8, 7),
}


def _representable(ed: _Editor, ql: Node) -> tuple[float, float, float] | None:
    """The float interval a QuantizeLinear can represent, ``[(qmin - zp) * s,
    (qmax - zp) * s]`` (over all channels), and half its largest step."""
    scale = ed.cval(ql.inputs[1]) if len(ql.inputs) > 1 and ql.inputs[1] else None
    zp_t = ql.inputs[2] if len(ql.inputs) > 2 and ql.inputs[2] else ""
    zp_c = ed.g.consts.get(zp_t) if zp_t else None
    if scale is None or (zp_t and (zp_c is None or zp_c.value() is None)):
        return None
    dtype = zp_c.dtype if zp_c is not None else onnx.TensorProto.UINT8  # the schema default
    if dtype not in _QRANGE:
        return None  # float8 and other saturating types: no simple range here
    qmin, qmax = _QRANGE[dtype]
    zp = np.asarray(zp_c.value(), dtype=np.float64) if zp_c is not None else np.zeros(1)
    s = np.asarray(scale, dtype=np.float64)
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        return None
    lo = (qmin - zp.ravel()) * s.ravel() if zp.size in (1, s.size) else None
    hi = (qmax - zp.ravel()) * s.ravel() if zp.size in (1, s.size) else None
    if lo is None or hi is None:
        return None
    return float(lo.min()), float(hi.max()), 0.5 * float(s.max())


def _round_trip(ed: _Editor, n: Node) -> tuple[str, ...]:
    """The round-trip parameters a folded node's result carries (see ``Const.round_trip``):
    a QuantizeLinear of a float constant starts one, ops on such values carry it along."""
    ins = [i for i in n.inputs if i]
    carried = tuple(dict.fromkeys(s for i in ins for s in ed.g.consts[i].round_trip))
    first = ed.g.consts[ins[0]]
    if n.op == "QuantizeLinear" and first.value_kind() == "f":
        return tuple(dict.fromkeys((*carried, *ed.csrc(*n.inputs[1:]))))
    if n.op == "DequantizeLinear":
        # codes stored as integers are a stored quantization, never a round trip
        return tuple(dict.fromkeys((*carried, *ed.csrc(*n.inputs[1:])))) if carried else ()
    return carried


def _collapse_quantization(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        if n.id not in g.nodes:
            continue
        if n.op == "QuantizeLinear" and n.inputs[0] not in g.consts:
            x = n.inputs[0]
            readers = [g.nodes[u] for u, _ in ed.users(x)]
            if not _collapsible(ed, n):
                continue
            # Every reader of x quantizes it (and only dequantizes after): values outside
            # the representable range never reach anything downstream.
            if all(r.op == "QuantizeLinear" and _collapsible(ed, r) for r in readers):
                ranges = [_representable(ed, r) for r in readers]
                if all(r is not None for r in ranges):
                    prev = g.qrange.get(x)
                    los, his, steps = zip(*[r for r in ranges if r is not None], strict=True)
                    lo, hi, step = min(los), max(his), max(steps)
                    if prev is not None:
                        lo, hi, step = min(lo, prev[0]), max(hi, prev[1]), max(step, prev[2])
                    g.qrange[x] = (lo, hi, step)
            dqs = [g.nodes[u] for u, _ in ed.users(n.outputs[0])]
            for dq in dqs:
                ed.remove(dq)
                ed.alias(dq.outputs[0], x)
                # the activation's calibrated scale / zero point parametrized only this
                # pair, which the canonical form drops: explained with it
                g.absorbed.update(ed.csrc(*dq.inputs[1:]))
            g.absorbed.update(ed.csrc(*n.inputs[1:]))
            ed.remove(n)
            ed.counts["collapsed QuantizeLinear/DequantizeLinear pairs"] += 1
        elif n.op in ("MatMulInteger", "ConvInteger"):
            _collapse_dynamic(ed, n)


def _collapsible(ed: _Editor, ql: Node) -> bool:
    """A QuantizeLinear read only by DequantizeLinear nodes with its own scale and zero
    point (and not a graph output): only then is the pair a rounding of its input. A
    dequantize at another scale rescales the activation, which nothing explains."""
    users = ed.users(ql.outputs[0])
    return (
        bool(users)
        and ql.outputs[0] not in ed.g.outputs
        and all(
            ed.g.nodes[u].op == "DequantizeLinear"
            and s == 0
            and _same_parameters(ed, ql, ed.g.nodes[u])
            for u, s in users
        )
    )


def _parameters(ed: _Editor, n: Node) -> tuple[np.ndarray, np.ndarray, int] | None:
    scale = ed.cval(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
    zp_t = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else ""
    zp = ed.cval(zp_t) if zp_t else np.zeros(1, dtype=np.uint8)
    if scale is None or zp is None:
        return None
    scale = np.asarray(scale, dtype=np.float64).ravel()
    axis = int(n.attrs.get("axis", 1)) if scale.size > 1 else 0
    return scale, np.asarray(zp, dtype=np.int64).ravel(), axis


def _same_parameters(ed: _Editor, ql: Node, dq: Node) -> bool:
    """Whether both nodes carry equal constant scales, zero points and axis. (Two
    different tensors holding the same value count as the same: QOperator files repeat
    an activation's scale beside each operator that reads it.)"""
    if ql.inputs[1:] == dq.inputs[1:] and ql.attrs.get("axis") == dq.attrs.get("axis"):
        return True
    a, b = _parameters(ed, ql), _parameters(ed, dq)
    if a is None or b is None:
        return False
    return _equal(a[0], b[0]) and _equal(a[1], b[1]) and a[2] == b[2]


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values, a single value standing for a uniform vector."""
    if a.size != b.size and min(a.size, b.size) != 1:
        return False
    return bool(np.all(a == b))


def _collapse_dynamic(ed: _Editor, n: Node) -> None:
    """DynamicQuantizeLinear(x) -> MatMulInteger/ConvInteger(.., Wq) -> Cast -> Mul(scale)
    is the float op on x with the dequantized weight (ONNX Runtime's quantize_dynamic)."""
    g = ed.g
    dql_id = g.producer.get(n.inputs[0])
    dql = g.nodes.get(dql_id) if dql_id is not None else None
    if dql is None or dql.op != "DynamicQuantizeLinear":
        return
    wq = ed.cval(n.inputs[1])
    if wq is None:
        _collapse_dynamic_float_weight(ed, n, dql)
        return
    wzp = ed.cval(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] else np.zeros(1)
    chain = _rescaling(ed, n)
    if chain is None:
        return
    cast, mul, sm = chain
    if dql.outputs[1] not in sm.inputs:
        return
    w_scale_t = sm.inputs[1] if sm.inputs[0] == dql.outputs[1] else sm.inputs[0]
    w_scale = ed.cval(w_scale_t)
    if w_scale is None or wzp is None:
        return
    if n.op == "MatMulInteger":
        scale = w_scale.astype(np.float32)  # per tensor, or per column (axis 1)
        w = (wq.astype(np.float32) - wzp.astype(np.float32)) * scale
        op, attrs = "MatMul", {}
    else:
        shape = (-1,) + (1,) * (wq.ndim - 1)
        scale = w_scale.astype(np.float32).reshape(shape if w_scale.size > 1 else (1,))
        w = (
            wq.astype(np.float32) - wzp.astype(np.float32).reshape(shape if wzp.size > 1 else (1,))
        ) * scale
        op, attrs = "Conv", dict(n.attrs)
    # round-to-nearest leaves each weight within half a step of the float one
    wt = ed.const(
        n.scope,
        w.astype(np.float32),
        ed.csrc(n.inputs[1], w_scale_t, *(n.inputs[3:4] or [])),
        "dequantized",
        0.5 * np.abs(scale),
    )
    ed.node(n, op, [dql.inputs[0], wt], mul.outputs[:1], attrs)
    for x in (n, cast, mul, sm):
        ed.remove(x)
    g.index()
    if not any(g.consumers.get(o) for o in dql.outputs if o):
        ed.remove(dql)
    ed.counts["collapsed dynamic quantization"] += 1


def _rescaling(ed: _Editor, n: Node) -> tuple[Node, Node, Node] | None:
    """The ``Cast -> Mul(scale product)`` that turns an integer op's int32 result back
    into floats, and the ``Mul`` that forms the scale product; None if absent."""
    cast = ed.sole_user(n.outputs[0])
    if cast is None or cast.op != "Cast":
        return None
    mul = ed.sole_user(cast.outputs[0])
    if mul is None or mul.op != "Mul":
        return None
    other = mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0]
    sm_id = ed.g.producer.get(other)
    sm = ed.g.nodes.get(sm_id) if sm_id is not None else None
    if sm is None or sm.op != "Mul":
        return None
    return cast, mul, sm


def _collapse_dynamic_float_weight(ed: _Editor, n: Node, dql: Node) -> None:
    """The same with the weight stored as float and quantized at run time too
    (``quantize_dynamic`` on a model whose weights are Constant nodes): DynamicQuantizeLinear
    on a constant W feeds the integer op, its scale the scale product. The float op on
    the stored W is what this computes, up to the run-time rounding of W and x; nothing
    is stored but W, so W is compared as it is."""
    g = ed.g
    wdql_id = g.producer.get(n.inputs[1])
    wdql = g.nodes.get(wdql_id) if wdql_id is not None else None
    if wdql is None or wdql.op != "DynamicQuantizeLinear" or ed.cval(wdql.inputs[0]) is None:
        return
    if len(n.inputs) > 3 and n.inputs[3] and n.inputs[3] != wdql.outputs[2]:
        return
    chain = _rescaling(ed, n)
    if chain is None:
        return
    cast, mul, sm = chain
    if sorted(sm.inputs) != sorted([dql.outputs[1], wdql.outputs[1]]):
        return
    op, attrs = ("MatMul", {}) if n.op == "MatMulInteger" else ("Conv", dict(n.attrs))
    ed.node(n, op, [dql.inputs[0], wdql.inputs[0]], mul.outputs[:1], attrs)
    for x in (n, cast, mul, sm):
        ed.remove(x)
    g.index()
    for q in (dql, wdql):
        if q.id in g.nodes and not any(g.consumers.get(o) for o in q.outputs if o):
            ed.remove(q)
    ed.counts["collapsed dynamic quantization (weights quantized at run time)"] += 1
