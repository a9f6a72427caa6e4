"""ONNX Runtime's contrib operators written out as the standard operators they stand for.

Each expansion is the operator's definition in ONNX Runtime's contrib-op documentation,
in the form exporters emit it, so a fused graph and the unfused one it came from reach
the same canonical form:

* ``QuickGelu(x, alpha)`` = ``x * Sigmoid(alpha * x)`` (the ``alpha * x`` product is left
  out when ``alpha`` is 1: a swish);
* ``FastGelu(x[, bias])`` = ``0.5 * y * (1 + Tanh(sqrt(2/pi) * (y + 0.044715 * y^3)))``
  with ``y = x + bias``;
* ``BiasAdd(x, bias, skip)`` = ``x + bias + skip``;
* ``BiasSoftmax(x, bias)`` = ``Softmax(x + bias)`` on the last axis;
* ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` (RMSNorm) =
  ``x / Sqrt(ReduceMean(x^2) + eps) * scale``;
* ``DynamicQuantizeMatMul(a, codes, scale, zp, bias)`` = ``MatMul(a, (codes - zp) *
  scale) + bias``, the dequantized weight carrying its half-step bound.
"""

from __future__ import annotations

import math

import numpy as np

from scanner.graph.canonical import Node
from scanner.graph.rewrites import _Editor

MS = "com.microsoft::"


def expand_contrib_ops(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        if not n.op.startswith(MS) or n.id not in g.nodes:
            continue
        kind = n.op[len(MS) :]
        fn = _EXPANSIONS.get(kind)
        if fn is None:
            continue
        if fn(ed, n):
            ed.remove(n)
            ed.counts[f"split {kind}"] += 1
    g.index()


def _c(ed: _Editor, like: Node, value: float) -> str:
    return ed.const(like.scope, np.float32(value))


def _quick_gelu(ed: _Editor, n: Node) -> bool:
    x = n.inputs[0]
    alpha = float(n.attrs.get("alpha", 1.702))
    ax = x if alpha == 1.0 else ed.node(n, "Mul", [x, _c(ed, n, alpha)]).outputs[0]
    s = ed.node(n, "Sigmoid", [ax])
    ed.node(n, "Mul", [x, s.outputs[0]], n.outputs[:1])
    return True


def _fast_gelu(ed: _Editor, n: Node) -> bool:
    y = n.inputs[0]
    if len(n.inputs) > 1 and n.inputs[1]:
        y = ed.node(n, "Add", [y, n.inputs[1]]).outputs[0]
    cube = ed.node(n, "Pow", [y, _c(ed, n, 3.0)]).outputs[0]
    inner = ed.node(n, "Mul", [cube, _c(ed, n, 0.044715)]).outputs[0]
    inner = ed.node(n, "Add", [y, inner]).outputs[0]
    inner = ed.node(n, "Mul", [inner, _c(ed, n, math.sqrt(2.0 / math.pi))]).outputs[0]
    t = ed.node(n, "Tanh", [inner]).outputs[0]
    t = ed.node(n, "Add", [t, _c(ed, n, 1.0)]).outputs[0]
    half = ed.node(n, "Mul", [y, _c(ed, n, 0.5)]).outputs[0]
    ed.node(n, "Mul", [half, t], n.outputs[:1])
    return True


def _bias_add(ed: _Editor, n: Node) -> bool:
    if len(n.inputs) != 3:
        return False
    s = ed.node(n, "Add", [n.inputs[0], n.inputs[1]]).outputs[0]
    ed.node(n, "Add", [s, n.inputs[2]], n.outputs[:1])
    return True


def _bias_softmax(ed: _Editor, n: Node) -> bool:
    axis = int(n.attrs.get("axis", 1))
    if int(n.attrs.get("is_inner_broadcast", 0)):
        return False
    s = ed.node(n, "Add", [n.inputs[0], n.inputs[1]]).outputs[0]
    ed.node(n, "Softmax", [s], n.outputs[:1], {"axis": axis})
    return True


def _rms_norm(ed: _Editor, n: Node, x: str, scale: str) -> None:
    axis = int(n.attrs.get("axis", -1))
    eps = float(n.attrs.get("epsilon", 1e-5))
    sq = ed.node(n, "Pow", [x, _c(ed, n, 2.0)]).outputs[0]
    mean = ed.node(n, "ReduceMean", [sq, ed.const(n.scope, np.asarray([axis]))]).outputs[0]
    root = ed.node(n, "Sqrt", [ed.node(n, "Add", [mean, _c(ed, n, eps)]).outputs[0]]).outputs[0]
    y = ed.node(n, "Div", [x, root]).outputs[0]
    ed.node(n, "Mul", [y, scale], n.outputs[:1])


def _simplified_ln(ed: _Editor, n: Node) -> bool:
    if any(o and ed.g.consumers.get(o) for o in n.outputs[1:]):
        return False
    _rms_norm(ed, n, n.inputs[0], n.inputs[1])
    return True


def _skip_simplified_ln(ed: _Editor, n: Node) -> bool:
    if any(o and ed.g.consumers.get(o) for o in n.outputs[1:3]):
        return False
    x = ed.node(n, "Add", [n.inputs[0], n.inputs[1]]).outputs[0]
    if len(n.inputs) > 3 and n.inputs[3]:
        x = ed.node(n, "Add", [x, n.inputs[3]]).outputs[0]
    if len(n.outputs) > 3 and n.outputs[3]:
        ed.alias(n.outputs[3], x)
    _rms_norm(ed, n, x, n.inputs[2])
    return True


def _dynamic_quantize_matmul(ed: _Editor, n: Node) -> bool:
    """``DynamicQuantizeMatMul(A, B, b_scale, b_zp, bias)``: A quantized at run time,
    times B dequantized, plus bias; written as the float MatMul with the dequantized
    weight, the form dynamic quantization collapses to (``MatMulIntegerToFloat`` fused
    by ONNX Runtime)."""
    ins = n.inputs + [""] * (5 - len(n.inputs))
    codes, scale = ed.cval(ins[1]), ed.cval(ins[2])
    zp = ed.cval(ins[3]) if ins[3] else np.zeros(1, dtype=np.int8)
    if codes is None or scale is None or zp is None:
        return False
    scale32 = scale.astype(np.float32)
    w = (codes.astype(np.float32) - zp.astype(np.float32)) * scale32
    srcs = ed.csrc(*(t for t in ins[1:4] if t))
    wt = ed.const(n.scope, w.astype(np.float32), srcs, "dequantized", 0.5 * np.abs(scale32))
    has_bias = bool(ins[4])
    y = ed.node(n, "MatMul", [ins[0], wt], None if has_bias else n.outputs[:1])
    if has_bias:
        ed.node(n, "Add", [y.outputs[0], ins[4]], n.outputs[:1])
    return True


_EXPANSIONS = {
    "DynamicQuantizeMatMul": _dynamic_quantize_matmul,
    "QuickGelu": _quick_gelu,
    "FastGelu": _fast_gelu,
    "BiasAdd": _bias_add,
    "BiasSoftmax": _bias_softmax,
    "SimplifiedLayerNormalization": _simplified_ln,
    "SkipSimplifiedLayerNormalization": _skip_simplified_ln,
}
