"""Canonicalizing rewrites: undo what exporters, optimizers and quantizers change benignly.

Each rewrite maps a graph to an equivalent one, so applying it to both sides of a diff
never hides a difference in what the graphs compute. Rewrites that need values (folding
BatchNormalization into a convolution, evaluating constant sub-expressions,
dequantizing weights) compute them here, and the derived constant keeps the stored
tensors it came from: after matching, :mod:`scanner.graph.diff` compares the derived
values with the deployed ones numerically before it explains any tensor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from scanner.graph.canonical import (
    COMMUTATIVE,  # noqa: F401  (re-exported)
    FOLD_LIMIT,
    SMALL_CONST,
    CanonicalGraph,
    Const,
    Node,
    const_from_array,
)
from scanner.graph.editor import (
    _ACTIVATIONS,
    _AXES_TO_INPUT,
    _FIXED_OUTPUT_TYPE,
    _INT64_MAX,
    NON_FOLDABLE,
    _Editor,
)
from scanner.graph.fold import _fold_into_conv, _folded_bound, _moved_atol
from scanner.graph.qoperator import expand_qoperator
from scanner.graph.quantization import _collapse_quantization, _round_trip


def normalize(g: CanonicalGraph) -> None:
    """Apply every canonicalizing rewrite to ``g`` in place; notes say what changed."""
    ed = _Editor(g)
    g.index()
    _opset_forms(ed)
    _aliases(ed)
    from scanner.graph.nchwc import unblock_nchwc

    unblock_nchwc(ed)
    g.index()
    for _ in range(6):
        before = sum(ed.counts.values())
        ed.shapes.reset()
        g.index()
        _unfuse(ed)
        g.index()
        _expand_contrib(ed)
        g.index()
        expand_qoperator(ed)
        g.index()
        _div_to_mul(ed)
        g.index()
        _fold_constants(ed)
        g.index()
        _simplify(ed)
        g.index()
        _part_forms(ed)
        g.index()
        _slices(ed)
        g.index()
        _pads(ed)
        g.index()
        _collapse_quantization(ed)
        g.index()
        _fold_into_conv(ed)
        g.index()
        _aliases(ed)
        if sum(ed.counts.values()) == before:
            break
    g.index()
    g.notes = [f"{what}: {n}" for what, n in sorted(ed.counts.items())]


# ------------------------------------------------------------------------- passes


def _expand_contrib(ed: _Editor) -> None:
    from scanner.graph.expand import expand_contrib_ops

    expand_contrib_ops(ed)


def _simplify(ed: _Editor) -> None:
    from scanner.graph import control, simplify
    from scanner.graph.transposes import sink_transposes

    control.inline_constant_ifs(ed)
    control.fold_integer_zero_products(ed)
    simplify.drop_neutral_operands(ed)
    simplify.cancel_squeeze_pairs(ed)
    simplify.fold_known_shapes(ed)
    simplify.reshape_inferred_dimension(ed)
    sink_transposes(ed)
    simplify.eliminate_common_subexpressions(ed)
    simplify.remove_dead_nodes(ed)


def _part_forms(ed: _Editor) -> None:
    from scanner.graph.slicing import gather_to_slice, normalize_slice_bounds, split_to_slices

    split_to_slices(ed)
    gather_to_slice(ed)
    normalize_slice_bounds(ed)


def _opset_forms(ed: _Editor) -> None:
    """Attributes that later opsets take as inputs become inputs (opset bumps match)."""
    for n in list(ed.g.nodes.values()):
        if n.op in _AXES_TO_INPUT and "axes" in n.attrs:
            axes = np.asarray(n.attrs.pop("axes"), dtype=np.int64)
            n.inputs = [n.inputs[0], ed.const(n.scope, axes)]
        elif n.op == "Split" and "split" in n.attrs:
            split = np.asarray(n.attrs.pop("split"), dtype=np.int64)
            n.inputs = [n.inputs[0], ed.const(n.scope, split)]
        elif n.op == "Clip" and ("min" in n.attrs or "max" in n.attrs):
            lo = n.attrs.pop("min", None)
            hi = n.attrs.pop("max", None)
            n.inputs = [
                n.inputs[0],
                "" if lo is None else ed.const(n.scope, np.float32(lo)),
                "" if hi is None else ed.const(n.scope, np.float32(hi)),
            ]
        elif n.op == "Pad" and "pads" in n.attrs:
            pads = np.asarray(n.attrs.pop("pads"), dtype=np.int64)
            value = n.attrs.pop("value", None)
            n.inputs = [n.inputs[0], ed.const(n.scope, pads)] + (
                [ed.const(n.scope, np.float32(value))] if value else []
            )
        while n.inputs and n.inputs[-1] == "":
            n.inputs.pop()


def _aliases(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        src_type = g.elem_types.get(n.inputs[0]) if n.inputs else None
        if src_type is None and n.inputs and n.inputs[0] in g.producer:
            src_type = _FIXED_OUTPUT_TYPE.get(g.nodes[g.producer[n.inputs[0]]].op)
        redundant_cast = n.op == "Cast" and src_type is not None and src_type == n.attrs.get("to")
        if (
            n.op == "Identity"
            or redundant_cast
            or (
                n.op == "Dropout"
                and (len(n.outputs) < 2 or not n.outputs[1] or not g.consumers.get(n.outputs[1]))
            )
        ):
            src = n.inputs[0]
            out = n.outputs[0]
            if out in g.outputs and (src in g.inputs or src in g.consts):
                continue  # a graph output must stay a distinct value
            ed.remove(n)
            ed.alias(out, src)
            ed.counts[f"removed {n.op}"] += 1
            g.index()


def _act_node(
    ed: _Editor, like: Node, act: str, params: list[float], x: str, outputs: list[str]
) -> Node:
    attrs: dict[str, Any] = {}
    inputs = [x]
    if act == "LeakyRelu" and params:
        attrs["alpha"] = params[0]
    elif act == "HardSigmoid" and params:
        attrs["alpha"], attrs["beta"] = params[0], params[1]
    elif act == "Clip" and len(params) >= 2:
        inputs += [
            ed.const(like.scope, np.float32(params[0])),
            ed.const(like.scope, np.float32(params[1])),
        ]
    elif act in ("Elu",) and params:
        attrs["alpha"] = params[0]
    return ed.node(like, act, inputs, outputs, attrs, "/act")


def _unfuse(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        op = n.op
        if op in ("com.microsoft::FusedConv", "com.microsoft::FusedGemm"):
            act = n.attrs.pop("activation", b"")
            act = act.decode() if isinstance(act, bytes) else str(act)
            params = list(n.attrs.pop("activation_params", []) or [])
            for k in ("activation_alpha", "activation_beta", "activation_gamma"):
                n.attrs.pop(k, None)
            if act and act not in _ACTIVATIONS:
                continue
            base = "Conv" if op.endswith("FusedConv") else "Gemm"
            inputs = list(n.inputs)
            z = inputs[3] if base == "Conv" and len(inputs) > 3 else ""
            core = ed.node(n, base, inputs[:3], None, n.attrs)
            y = core.outputs[0]
            if z:
                y = ed.node(n, "Add", [y, z], None, {}, "/sum").outputs[0]
            if act:
                _act_node(ed, n, act, params, y, n.outputs[:1])
            else:
                ed.alias(n.outputs[0], y)
            ed.remove(n)
            ed.counts[f"split {op.rpartition('::')[2]}"] += 1
        elif op == "Gemm":
            _unfuse_gemm(ed, n)
        elif op == "com.microsoft::FusedMatMul":
            a, b = n.inputs[0], n.inputs[1]
            ta, tb = int(n.attrs.get("transA", 0)), int(n.attrs.get("transB", 0))
            alpha = float(n.attrs.get("alpha", 1.0))
            if int(n.attrs.get("transBatchA", 0)) or int(n.attrs.get("transBatchB", 0)):
                continue
            a = _swap_last_axes(ed, n, a) if ta else a
            b = _swap_last_axes(ed, n, b) if tb else b
            if a is None or b is None:
                continue
            out = n.outputs[0]
            if alpha != 1.0:
                mm = ed.node(n, "MatMul", [a, b])
                ed.node(n, "Mul", [mm.outputs[0], ed.const(n.scope, np.float32(alpha))], [out])
            else:
                ed.node(n, "MatMul", [a, b], [out])
            ed.remove(n)
            ed.counts["split FusedMatMul"] += 1
        elif op == "HardSwish":
            hs = ed.node(n, "HardSigmoid", [n.inputs[0]], None, {"alpha": 1.0 / 6, "beta": 0.5})
            ed.node(n, "Mul", [n.inputs[0], hs.outputs[0]], n.outputs[:1])
            ed.remove(n)
            ed.counts["split HardSwish"] += 1
        elif op in ("com.microsoft::Gelu", "com.microsoft::BiasGelu"):
            x = n.inputs[0]
            if op.endswith("BiasGelu"):
                x = ed.node(n, "Add", [x, n.inputs[1]]).outputs[0]
            _gelu(ed, n, x, n.outputs[0])
            ed.remove(n)
            ed.counts[f"split {op.rpartition('::')[2]}"] += 1
        elif op == "LayerNormalization" and len([o for o in n.outputs if o]) == 1:
            _layer_norm(ed, n, n.inputs[0], n.outputs[0])
            ed.remove(n)
            ed.counts["split LayerNormalization"] += 1
        elif op == "com.microsoft::SkipLayerNormalization":
            if any(o and g.consumers.get(o) for o in n.outputs[1:3]):
                continue
            x = ed.node(n, "Add", [n.inputs[0], n.inputs[1]]).outputs[0]
            if len(n.inputs) > 4 and n.inputs[4]:
                x = ed.node(n, "Add", [x, n.inputs[4]]).outputs[0]
            if len(n.outputs) > 3 and n.outputs[3]:
                ed.alias(n.outputs[3], x)
            ln = Node(
                -1,
                n.name,
                "LayerNormalization",
                {"epsilon": n.attrs.get("epsilon", 1e-5)},
                [x, n.inputs[2], n.inputs[3] if len(n.inputs) > 3 else ""],
                n.outputs[:1],
                n.scope,
                n.origin,
            )
            _layer_norm(ed, ln, x, n.outputs[0])
            ed.remove(n)
            ed.counts["split SkipLayerNormalization"] += 1


def _swap_last_axes(ed: _Editor, like: Node, x: str) -> str | None:
    """``x`` with its last two axes swapped: a transposed constant, or a Transpose node
    where the rank is known (``None`` otherwise)."""
    v = ed.cval(x)
    if v is not None:
        return ed.const(
            like.scope,
            np.swapaxes(v, -1, -2),
            ed.csrc(x),
            "transpose",
            _moved_atol(ed.catol(x), v.shape, lambda a: np.swapaxes(a, -1, -2)),
        )
    rank = ed.shapes.rank(x)
    if rank is None or rank < 2:
        return None
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return ed.node(like, "Transpose", [x], None, {"perm": perm}, "/trans").outputs[0]


def _div_to_mul(ed: _Editor) -> None:
    """``x / c`` is ``x * (1/c)`` for a float constant ``c`` without zeros: exporters write
    the attention scale as a Div, ONNX Runtime folds it into a MatMul's ``alpha``."""
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Div" or len(n.inputs) != 2 or n.inputs[0] in g.consts:
            continue
        c = ed.cval(n.inputs[1])
        if c is None or c.dtype.kind != "f" or c.size > SMALL_CONST or not np.all(c != 0):
            continue
        inv = ed.const(
            n.scope,
            (1.0 / c.astype(np.float64)).astype(c.dtype),
            ed.csrc(n.inputs[1]),
            "reciprocal",
        )
        n.op, n.inputs = "Mul", [n.inputs[0], inv]
        ed.counts["division by a constant as multiplication"] += 1


def _slice_params(ed: _Editor, n: Node) -> list[tuple[int, int, int, int]] | None:
    """(axis, start, end, step) per sliced axis of a Slice with constant parameters."""
    ins = n.inputs + [""] * (5 - len(n.inputs))
    starts, ends = ed.cval(ins[1]), ed.cval(ins[2])
    if starts is None or ends is None:
        return None
    axes = ed.cval(ins[3]) if ins[3] else np.arange(starts.size)
    steps = ed.cval(ins[4]) if ins[4] else np.ones(starts.size, dtype=np.int64)
    if axes is None or steps is None or not (starts.size == ends.size == axes.size == steps.size):
        return None
    return [
        (int(a), int(s), int(e), int(t))
        for a, s, e, t in zip(
            axes.ravel(), starts.ravel(), ends.ravel(), steps.ravel(), strict=True
        )
    ]


def _full(start: int, end: int, step: int) -> bool:
    # [0 : INT64_MAX-ish : 1] keeps the whole axis whatever its length
    return step == 1 and start == 0 and end >= _INT64_MAX // 2


def _set_slice(
    ed: _Editor, n: Node, params: list[tuple[int, int, int, int]], sources: tuple[str, ...]
) -> None:
    params = sorted(params)
    cols = list(zip(*params, strict=True))
    n.inputs = [
        n.inputs[0],
        *(
            ed.const(n.scope, np.asarray(c, dtype=np.int64), sources, "slice-merge")
            for c in (cols[1], cols[2], cols[0], cols[3])
        ),
    ]


def _slices(ed: _Editor) -> None:
    """Canonical slices: axes that keep everything are dropped (a Slice left with none is
    an alias), and a Slice of a Slice (its only reader) is one Slice. On different axes
    the two commute; on the same axis, with non-negative bounds and positive steps,
    ``x[s1:e1:t1][s2:e2:t2] == x[s1 + s2*t1 : min(e1, s1 + e2*t1) : t1*t2]``. Other
    cases (negative bounds need the axis length) are left alone."""
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Slice" or n.id not in g.nodes:
            continue
        params = _slice_params(ed, n)
        if params is None or len({a for a, *_ in params}) != len(params):
            continue
        kept = [p for p in params if not _full(*p[1:])]
        if not kept:
            if n.outputs[0] in g.outputs and n.inputs[0] in g.inputs:
                continue  # a graph output must stay a distinct value
            ed.drop_identity(n, "removed Slice keeping whole axes")
            continue
        pid = g.producer.get(n.inputs[0])
        first = g.nodes.get(pid) if pid is not None else None
        inner = _slice_params(ed, first) if first is not None and first.op == "Slice" else None
        if first is not None and inner is not None and ed.sole_user(n.inputs[0]) is n:
            merged = _compose(inner, kept)
            if merged is not None:
                src = ed.csrc(*first.inputs[1:], *n.inputs[1:])
                n.inputs = [first.inputs[0]]
                _set_slice(ed, n, merged, src)
                n.origin = (*first.origin, *n.origin)
                ed.remove(first)
                ed.counts["merged Slice chains"] += 1
                g.index()
                continue
        if len(kept) != len(params):
            _set_slice(ed, n, kept, ed.csrc(*n.inputs[1:]))
            ed.counts["removed Slice axes keeping everything"] += 1


def _compose(
    inner: list[tuple[int, int, int, int]], outer: list[tuple[int, int, int, int]]
) -> list[tuple[int, int, int, int]] | None:
    if len({a for a, *_ in inner}) != len(inner):
        return None
    out = {a: (s, e, t) for a, s, e, t in inner if not _full(s, e, t)}
    for a, s2, e2, t2 in outer:
        if a not in out:
            out[a] = (s2, e2, t2)
            continue
        s1, e1, t1 = out[a]
        if a < 0 or min(s1, e1, s2, e2) < 0 or t1 <= 0 or t2 <= 0:
            return None  # negative axes or bounds depend on the axis length
        end = _INT64_MAX if e2 >= _INT64_MAX // (2 * t1) else s1 + e2 * t1
        out[a] = (s1 + s2 * t1, min(e1, end), t1 * t2)
    if any(a < 0 for a in out) and len(out) > 1:
        return None  # -1 and 3 may be the same axis: only one negative axis is safe alone
    return [(a, s, e, t) for a, (s, e, t) in out.items()]


def _pads(ed: _Editor) -> None:
    """``Pad`` with all-zero pads is an alias; ``Pad(Pad(x, p1), p2)`` with the same mode
    is ``Pad(x, p1 + p2)`` for ``constant`` (same value) and ``edge`` modes with
    non-negative pads. Reflection does not compose (it would reflect the padding)."""
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Pad" or n.id not in g.nodes or len(n.inputs) < 2 or len(n.inputs) > 3:
            continue
        pads = ed.cval(n.inputs[1])
        if pads is None:
            continue
        if not np.any(pads):
            if n.outputs[0] in g.outputs and n.inputs[0] in g.inputs:
                continue
            ed.drop_identity(n, "removed Pad of zeros")
            continue
        mode = n.attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        pid = g.producer.get(n.inputs[0])
        first = g.nodes.get(pid) if pid is not None else None
        if (
            mode not in ("constant", "edge")
            or first is None
            or first.op != "Pad"
            or len(first.inputs) > 3
            or ed.sole_user(n.inputs[0]) is not n
        ):
            continue
        f_mode = first.attrs.get("mode", b"constant")
        f_mode = f_mode.decode() if isinstance(f_mode, bytes) else str(f_mode)
        inner = ed.cval(first.inputs[1]) if len(first.inputs) > 1 else None
        if f_mode != mode or inner is None or inner.shape != pads.shape:
            continue
        if (inner < 0).any() or (pads < 0).any():
            continue  # a crop followed by a pad is not a single pad
        values = [
            ed.cval(x.inputs[2]) if len(x.inputs) > 2 and x.inputs[2] else np.zeros(1)
            for x in (first, n)
        ]
        if mode == "constant" and (
            values[0] is None
            or values[1] is None
            or float(np.ravel(values[0])[0]) != float(np.ravel(values[1])[0])
        ):
            continue
        total = ed.const(
            n.scope, (inner + pads).astype(np.int64), ed.csrc(first.inputs[1], n.inputs[1])
        )
        n.inputs = [first.inputs[0], total, *n.inputs[2:]]
        n.origin = (*first.origin, *n.origin)
        ed.remove(first)
        ed.counts["merged Pad chains"] += 1
        g.index()


def _unfuse_gemm(ed: _Editor, n: Node) -> None:
    a, b = n.inputs[0], n.inputs[1]
    c = n.inputs[2] if len(n.inputs) > 2 else ""
    alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
    if int(n.attrs.get("transA", 0)):
        a = ed.node(n, "Transpose", [a], None, {"perm": [1, 0]}).outputs[0]
    if int(n.attrs.get("transB", 0)):
        bv = ed.cval(b)
        if bv is not None:
            b = ed.const(
                n.scope,
                np.ascontiguousarray(bv.T),
                ed.csrc(b),
                "transpose",
                _moved_atol(ed.catol(b), bv.shape, lambda x: x.T),
            )
        else:
            b = ed.node(n, "Transpose", [b], None, {"perm": [1, 0]}).outputs[0]
    out = n.outputs[0]
    y = ed.node(n, "MatMul", [a, b], None if (c or alpha != 1.0) else [out]).outputs[0]
    if alpha != 1.0:
        y = ed.node(
            n, "Mul", [y, ed.const(n.scope, np.float32(alpha))], None if c else [out]
        ).outputs[0]
    if c:
        if beta != 1.0:
            cv = ed.cval(c)
            c = (
                ed.const(n.scope, (cv * beta).astype(cv.dtype), ed.csrc(c), "scale")
                if cv is not None
                else ed.node(n, "Mul", [c, ed.const(n.scope, np.float32(beta))]).outputs[0]
            )
        ed.node(n, "Add", [y, c], [out])
    ed.remove(n)
    ed.counts["split Gemm into MatMul+Add"] += 1


def _gelu(ed: _Editor, like: Node, x: str, out: str) -> None:
    # torch.onnx's exact GELU: x * (erf(x / sqrt(2)) + 1) * 0.5
    d = ed.node(like, "Div", [x, ed.const(like.scope, np.float32(math.sqrt(2.0)))])
    e = ed.node(like, "Erf", d.outputs)
    a = ed.node(like, "Add", [e.outputs[0], ed.const(like.scope, np.float32(1.0))])
    m = ed.node(like, "Mul", [x, a.outputs[0]])
    ed.node(like, "Mul", [m.outputs[0], ed.const(like.scope, np.float32(0.5))], [out])


def _layer_norm(ed: _Editor, n: Node, x: str, out: str) -> None:
    # torch.onnx's LayerNorm before opset 17 (the form ONNX Runtime fuses).
    axis = int(n.attrs.get("axis", -1))
    eps = float(n.attrs.get("epsilon", 1e-5))
    axes = ed.const(n.scope, np.asarray([axis], dtype=np.int64))
    mean = ed.node(n, "ReduceMean", [x, axes])
    d = ed.node(n, "Sub", [x, mean.outputs[0]])
    p = ed.node(n, "Pow", [d.outputs[0], ed.const(n.scope, np.float32(2.0))])
    var = ed.node(n, "ReduceMean", [p.outputs[0], ed.const(n.scope, np.asarray([axis]))])
    a = ed.node(n, "Add", [var.outputs[0], ed.const(n.scope, np.float32(eps))])
    s = ed.node(n, "Sqrt", a.outputs)
    y = ed.node(n, "Div", [d.outputs[0], s.outputs[0]])
    scale = n.inputs[1] if len(n.inputs) > 1 else ""
    bias = n.inputs[2] if len(n.inputs) > 2 else ""
    last = y.outputs[0]
    if scale:
        last = ed.node(n, "Mul", [last, scale], None if bias else [out]).outputs[0]
    if bias:
        ed.node(n, "Add", [last, bias], [out])
    elif not scale:
        ed.alias(out, last)


def _to_proto_attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    return value


def _fold_constants(ed: _Editor) -> None:
    from onnx.reference import ReferenceEvaluator

    g = ed.g
    for n in list(g.nodes.values()):
        if n.op in NON_FOLDABLE or "::" in n.op or n.bodies or not n.inputs:
            continue
        ins = [i for i in n.inputs if i]
        if not ins or not all(i in g.consts for i in ins):
            continue
        if sum(g.consts[i].numel for i in ins) > FOLD_LIMIT:
            continue
        values = [g.consts[i].value() for i in ins]
        if any(v is None for v in values):
            continue
        names = [f"i{k}" if i else "" for k, i in enumerate(n.inputs)]
        outs = [f"o{k}" for k in range(len(n.outputs))]
        try:
            proto = onnx.helper.make_node(
                n.op, names, outs, **{k: _to_proto_attr(v) for k, v in n.attrs.items()}
            )
            feeds = {f"i{k}": g.consts[i].value() for k, i in enumerate(n.inputs) if i}
            results = ReferenceEvaluator(proto).run(None, feeds)
        except Exception:  # an op the reference runtime cannot evaluate stays a node
            continue
        if any(np.asarray(r).size > FOLD_LIMIT for r in results):
            continue
        src = ed.csrc(*ins)
        derivation, atol = _folded_bound(ed, n, proto, results)
        trip = _round_trip(ed, n)
        for k, (o, r) in enumerate(zip(n.outputs, results, strict=False)):
            if o:
                g.consts[o] = const_from_array(
                    np.asarray(r), src, derivation, atol if k == 0 else None
                )
                g.consts[o].round_trip = trip
        ed.remove(n)
        ed.counts["folded constant expressions"] += 1


def const_sources(g: CanonicalGraph, tensor: str) -> tuple[str, ...]:
    c: Const | None = g.consts.get(tensor)
    return c.sources if c is not None else ()
