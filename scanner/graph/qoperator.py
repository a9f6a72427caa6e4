"""ONNX Runtime's QOperator quantization format written out in QDQ form.

A static quantizer writes a model either as QDQ (float operators between
QuantizeLinear/DequantizeLinear pairs) or as QOperator, where one integer operator takes
the quantized inputs with their scales and zero points and returns a quantized output:

* ``QLinearConv(x, xs, xz, w, ws, wz, ys, yz[, B])`` = ``Q(Conv(DQ(x), DQ(w), DQ(B)), ys, yz)``
  with the int32 bias ``B`` at scale ``xs * ws`` and zero point 0 (the operator's
  definition in the ONNX specification);
* ``QLinearMatMul(a, as, az, b, bs, bz, ys, yz)`` = ``Q(MatMul(DQ(a), DQ(b)), ys, yz)``;
* ONNX Runtime's contrib ``QGemm(a, as, az, b, bs, bz[, C][, ys, yz])`` = ``Gemm`` of the
  dequantized operands, the int32 ``C`` at scale ``as * bs``, quantized when ``ys`` is
  given (only with ``alpha`` 1, where that bias scale is unambiguous);
* ONNX Runtime's contrib ``QLinearAdd``/``QLinearMul`` (binary), ``QLinearSigmoid``,
  ``QLinearLeakyRelu``, ``QLinearSoftmax``, ``QLinearGlobalAveragePool``,
  ``QLinearAveragePool`` (unary) and ``QLinearConcat``, each the float operator between
  the same dequantize and quantize steps.

Written this way, the QOperator file reaches the form its QDQ twin has, and the QDQ
collapse takes it back to the float graph: weights dequantized with their half-step
bound, activation scales absorbed only where a quantize is read by a dequantize with the
very same parameters. Data-movement operators that the quantizer leaves on integer
tensors (``MaxPool``, ``Reshape``, ``Transpose`` ...) commute with a per-tensor
dequantize, which is moved before them so that the pairs meet.
"""

from __future__ import annotations

import numpy as np

from scanner.graph.canonical import Node
from scanner.graph.editor import _Editor

MS = "com.microsoft::"
_UNARY = {
    f"{MS}QLinearSigmoid": "Sigmoid",
    f"{MS}QLinearLeakyRelu": "LeakyRelu",
    f"{MS}QLinearSoftmax": "Softmax",
    f"{MS}QLinearGlobalAveragePool": "GlobalAveragePool",
    f"{MS}QLinearAveragePool": "AveragePool",
}
_BINARY = {f"{MS}QLinearAdd": "Add", f"{MS}QLinearMul": "Mul"}
_DROPPED_ATTRS = {"opset", "channels_last"}
"""Contrib attributes that say how the integer kernel runs, not what it computes (a
channels-last pool is refused before they are dropped)."""
_MOVES = {
    "MaxPool",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Slice",
    "Gather",
    "DepthToSpace",
    "SpaceToDepth",
}
"""Operators that only select, reorder or take the maximum of elements: with a positive
per-tensor scale (and only then), dequantizing before or after them gives the same
values."""


def expand_qoperator(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        if n.id not in g.nodes:
            continue
        if _expand(ed, n):
            ed.remove(n)
            ed.counts[f"wrote {n.op.removeprefix(MS)} in QDQ form"] += 1
    g.index()
    _dequantize_before_moves(ed)


def _expand(ed: _Editor, n: Node) -> bool:
    ins = n.inputs + [""] * (9 - len(n.inputs))
    if n.op == "QLinearConv":
        return _conv(ed, n, ins)
    if n.op == "QLinearMatMul":
        a = _dq(ed, n, ins[0], ins[1], ins[2])
        b = _dq(ed, n, ins[3], ins[4], ins[5], axis=-1)
        y = ed.node(n, "MatMul", [a, b]).outputs[0]
        return _q(ed, n, y, ins[6], ins[7])
    if n.op == f"{MS}QGemm":
        return _gemm(ed, n, ins)
    if n.op in _BINARY:
        if not ins[6]:
            return False
        a = _dq(ed, n, ins[0], ins[1], ins[2])
        b = _dq(ed, n, ins[3], ins[4], ins[5])
        y = ed.node(n, _BINARY[n.op], [a, b]).outputs[0]
        return _q(ed, n, y, ins[6], ins[7])
    if n.op in _UNARY:
        if int(n.attrs.get("channels_last", 0)) or not ins[3]:
            return False
        attrs = {k: v for k, v in n.attrs.items() if k not in _DROPPED_ATTRS}
        x = _dq(ed, n, ins[0], ins[1], ins[2])
        y = ed.node(n, _UNARY[n.op], [x], attrs=attrs).outputs[0]
        return _q(ed, n, y, ins[3], ins[4])
    if n.op == f"{MS}QLinearConcat":
        triples = n.inputs[2:]
        if len(triples) % 3 or not triples:
            return False
        parts = [_dq(ed, n, *triples[k : k + 3]) for k in range(0, len(triples), 3)]
        y = ed.node(n, "Concat", parts, attrs={"axis": int(n.attrs.get("axis", 0))}).outputs[0]
        return _q(ed, n, y, n.inputs[0], n.inputs[1])
    return False


def _conv(ed: _Editor, n: Node, ins: list[str]) -> bool:
    operands = [_dq(ed, n, ins[0], ins[1], ins[2]), _dq(ed, n, ins[3], ins[4], ins[5], axis=0)]
    if ins[8]:
        bias = _bias(ed, n, ins[8], ins[1], ins[4], axis=0)
        if bias is None:
            return False
        operands.append(bias)
    y = ed.node(n, "Conv", operands, attrs=dict(n.attrs)).outputs[0]
    return _q(ed, n, y, ins[6], ins[7])


def _gemm(ed: _Editor, n: Node, ins: list[str]) -> bool:
    if float(n.attrs.get("alpha", 1.0)) != 1.0:
        return False
    b_axis = 0 if int(n.attrs.get("transB", 0)) else 1
    operands = [_dq(ed, n, ins[0], ins[1], ins[2]), _dq(ed, n, ins[3], ins[4], ins[5], b_axis)]
    if ins[6]:
        bias = _bias(ed, n, ins[6], ins[1], ins[4], axis=0)
        if bias is None:
            return False
        operands.append(bias)
    attrs = {k: v for k, v in n.attrs.items() if k in ("transA", "transB")}
    if not ins[7]:
        ed.node(n, "Gemm", operands, n.outputs[:1], attrs)
        return True
    y = ed.node(n, "Gemm", operands, attrs=attrs).outputs[0]
    return _q(ed, n, y, ins[7], ins[8])


def _bias(ed: _Editor, n: Node, codes: str, x_scale: str, w_scale: str, axis: int) -> str | None:
    """The int32 bias dequantized at the product of the input and weight scales, zero
    point 0 (how QLinearConv and QGemm define it)."""
    xs, ws = ed.cval(x_scale), ed.cval(w_scale)
    if xs is None or ws is None:
        return None
    scale = (xs.astype(np.float32) * ws.astype(np.float32)).astype(np.float32).reshape(-1)
    bs = ed.const(n.scope, scale, ed.csrc(x_scale, w_scale))
    attrs = {"axis": axis} if scale.size > 1 else {}
    return ed.node(n, "DequantizeLinear", [codes, bs], attrs=attrs).outputs[0]


def _dq(ed: _Editor, n: Node, x: str, scale: str, zp: str, axis: int = 1) -> str:
    inputs = [x, scale] + ([zp] if zp else [])
    attrs = {"axis": axis} if ed.g.consts.get(scale) is not None and _size(ed, scale) > 1 else {}
    return ed.node(n, "DequantizeLinear", inputs, attrs=attrs).outputs[0]


def _q(ed: _Editor, n: Node, y: str, scale: str, zp: str) -> bool:
    inputs = [y, scale] + ([zp] if zp else [])
    ed.node(n, "QuantizeLinear", inputs, n.outputs[:1])
    return True


def _size(ed: _Editor, tensor: str) -> int:
    v = ed.cval(tensor)
    return 1 if v is None else int(np.asarray(v).size)


def _dequantize_before_moves(ed: _Editor) -> None:
    """``DQ(move(q))`` -> ``move(DQ(q))`` for a per-tensor DQ of a data-movement result
    read by nothing else."""
    g = ed.g
    for dq in list(g.nodes.values()):
        if dq.id not in g.nodes or dq.op != "DequantizeLinear" or len(dq.inputs) < 2:
            continue
        pid = g.producer.get(dq.inputs[0])
        move = g.nodes.get(pid) if pid is not None else None
        if move is None or move.op not in _MOVES or ed.sole_user(move.outputs[0]) is not dq:
            continue
        if any(o and g.consumers.get(o) for o in move.outputs[1:]):
            continue  # MaxPool's indices are read: they are not moved values
        if any(_size(ed, t) != 1 or ed.cval(t) is None for t in dq.inputs[1:] if t):
            continue
        if not float(np.asarray(ed.cval(dq.inputs[1])).reshape(-1)[0]) > 0:
            continue  # a negative scale turns the max of codes into the min of values
        if move.inputs[0] in g.consts:
            continue  # a constant's move folds on its own
        inner = ed.node(dq, "DequantizeLinear", [move.inputs[0], *dq.inputs[1:]], attrs={})
        ed.node(move, move.op, [inner.outputs[0], *move.inputs[1:]], dq.outputs[:1], move.attrs)
        ed.remove(dq)
        ed.remove(move)
        ed.counts[f"dequantized before {move.op}"] += 1
        g.index()
