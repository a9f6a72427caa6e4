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
from collections import Counter
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
    """A QuantizeLinear read only by DequantizeLinear nodes (and not a graph output)."""
    users = ed.users(ql.outputs[0])
    return (
        bool(users)
        and ql.outputs[0] not in ed.g.outputs
        and all(ed.g.nodes[u].op == "DequantizeLinear" and s == 0 for u, s in users)
    )


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
    cast = ed.sole_user(n.outputs[0])
    if cast is None or cast.op != "Cast":
        return
    mul = ed.sole_user(cast.outputs[0])
    if mul is None or mul.op != "Mul":
        return
    other = mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0]
    sm_id = g.producer.get(other)
    sm = g.nodes.get(sm_id) if sm_id is not None else None
    if sm is None or sm.op != "Mul" or dql.outputs[1] not in sm.inputs:
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
    cast = ed.sole_user(n.outputs[0])
    if cast is None or cast.op != "Cast":
        return
    mul = ed.sole_user(cast.outputs[0])
    if mul is None or mul.op != "Mul":
        return
    other = mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0]
    sm_id = g.producer.get(other)
    sm = g.nodes.get(sm_id) if sm_id is not None else None
    if (
        sm is None
        or sm.op != "Mul"
        or sorted(sm.inputs) != sorted([dql.outputs[1], wdql.outputs[1]])
    ):
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


def _per_channel(v: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant broadcast against a rank-``rank`` [N, C, ...] tensor that varies only
    along C (axis 1), as a [C] vector; ``None`` when it is anything else."""
    if v.size == 1 and v.ndim <= rank:
        return np.full(channels, float(v.ravel()[0]), dtype=np.float32)
    ci = v.ndim - rank + 1  # the constant's axis that lines up with C under broadcasting
    if v.ndim > rank or ci < 0 or v.shape[ci] != channels or v.size != channels:
        return None
    return v.reshape(channels).astype(np.float32)


def _fold_into_conv(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Conv" or n.id not in g.nodes or len(n.inputs) < 2:
            continue
        w = ed.cval(n.inputs[1])
        if w is None or w.dtype.kind != "f":
            continue
        nxt = ed.sole_user(n.outputs[0])
        if nxt is None:
            continue
        cout = w.shape[0]
        b_t = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else ""
        b = ed.cval(b_t) if b_t else np.zeros(cout, dtype=np.float32)
        if b is None:
            continue
        w_tol = _tol(ed, n.inputs[1], w.shape)
        b_tol = _tol(ed, b_t, b.shape) if b_t else np.zeros(b.shape)
        w64, b64 = w.astype(np.float64), b.astype(np.float64)
        chan = (-1,) + (1,) * (w.ndim - 1)
        if nxt.op == "BatchNormalization" and len([o for o in nxt.outputs if o]) == 1:
            params = [ed.cval(t) for t in nxt.inputs[1:5]]
            if any(p is None for p in params):
                continue
            scale, beta, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
            eps = float(nxt.attrs.get("epsilon", 1e-5))
            if not np.all(np.isfinite(var)) or np.any(var + eps <= 0):
                continue  # a negative variance is no normalization: nothing to fold
            root = np.sqrt(var + eps)
            s = scale / root
            new_w = w64 * s.reshape(chan)
            new_b = (b64 - mean) * s + beta
            # Quantized BN parameters (a QDQ model dequantizes them too) carry bounds:
            # first-order propagation through s = gamma / sqrt(var + eps).
            tols = [_tol(ed, t, p.shape) for t, p in zip(nxt.inputs[1:5], params, strict=True)]  # type: ignore[union-attr]
            s_tol = tols[0] / root + np.abs(scale) * 0.5 * tols[3] / root**3
            w_atol = _product_tol(w64, w_tol, s.reshape(chan), s_tol.reshape(chan))
            b_atol = _product_tol(b64 - mean, b_tol + tols[2], s, s_tol) + tols[1]
            what = "folded BatchNormalization into Conv"
            srcs = ed.csrc(n.inputs[1], b_t, *nxt.inputs[1:5])
        elif nxt.op in ("Add", "Mul"):
            other = nxt.inputs[1] if nxt.inputs[0] == n.outputs[0] else nxt.inputs[0]
            c = ed.cval(other)
            vec = _per_channel(c, cout, w.ndim) if c is not None else None
            if vec is None:
                continue
            v_tol = _tol(ed, other, c.shape).reshape(-1)  # type: ignore[union-attr]
            v_tol = np.broadcast_to(v_tol if v_tol.size == cout else v_tol[:1], (cout,))
            vec64 = vec.astype(np.float64)
            if nxt.op == "Add":
                new_w, new_b = w64, b64 + vec64
                w_atol, b_atol = w_tol, b_tol + v_tol
            else:
                new_w = w64 * vec64.reshape(chan)
                new_b = b64 * vec64
                w_atol = _product_tol(w64, w_tol, vec64.reshape(chan), v_tol.reshape(chan))
                b_atol = _product_tol(b64, b_tol, vec64, v_tol)
            what = f"folded per-channel {nxt.op} into Conv"
            srcs = ed.csrc(n.inputs[1], b_t, other)
        else:
            continue
        if not (np.any(w_atol) or np.any(b_atol)):
            w_atol = b_atol = None  # exact on both: compared with the float tolerance
        wt = ed.const(n.scope, new_w.astype(w.dtype), srcs, "conv-fold", w_atol)
        bt = ed.const(n.scope, new_b.astype(w.dtype), srcs, "conv-fold", b_atol)
        trip = tuple(
            dict.fromkeys(
                s
                for t in (*n.inputs[1:], *nxt.inputs[1:])
                if t in g.consts
                for s in g.consts[t].round_trip
            )
        )
        g.consts[wt].round_trip = g.consts[bt].round_trip = trip
        n.inputs = [n.inputs[0], wt, bt]
        n.outputs = list(nxt.outputs[:1])
        n.origin = (*n.origin, *nxt.origin)
        ed.remove(nxt)
        g.index()
        ed.counts[what] += 1


# ------------------------------------------------------------------- error bounds
# A dequantized weight is only within half a step of the float one it replaces. The bound
# travels with the constant through the rewrites that move or scale it, so a fused and
# quantized weight is still checked element by element against the trusted float one.

_MOVES = {
    "Transpose",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Identity",
    "Expand",
    "Slice",
    "Gather",
    "Concat",
    "Tile",
}
"""Ops that only move elements: the same op applied to the bound moves it along."""


def _moved_atol(atol: np.ndarray | None, shape: tuple[int, ...], move: Any) -> np.ndarray | None:
    if atol is None:
        return None
    return np.ascontiguousarray(move(np.broadcast_to(atol, shape)))


def _tol(ed: _Editor, tensor: str, shape: tuple[int, ...]) -> np.ndarray:
    """The rounding bound of a constant broadcast to ``shape`` (zeros when exact)."""
    atol = ed.catol(tensor) if tensor else None
    if atol is None:
        return np.zeros(shape)
    try:
        return np.broadcast_to(np.asarray(atol, dtype=np.float64), shape)
    except ValueError:
        return np.zeros(shape)


def _product_tol(a: np.ndarray, a_tol: np.ndarray, b: np.ndarray, b_tol: np.ndarray) -> np.ndarray:
    """Bound on |a*b - a'*b'| when |a - a'| <= a_tol and |b - b'| <= b_tol."""
    return a_tol * np.abs(b) + np.abs(a) * b_tol + a_tol * b_tol


def _folded_bound(
    ed: _Editor, n: Node, proto: onnx.NodeProto, results: list[Any]
) -> tuple[str, np.ndarray | None]:
    """Derivation and error bound of a folded node's first output."""
    from onnx.reference import ReferenceEvaluator

    if n.op == "DequantizeLinear" and len(n.inputs) > 1:
        scale = ed.cval(n.inputs[1])
        out = np.asarray(results[0])
        if scale is None:
            return "dequantized", None
        scale = np.abs(np.asarray(scale, dtype=np.float64))
        if scale.ndim == 1 and scale.size > 1 and out.ndim > 1:
            axis = int(n.attrs.get("axis", 1)) % out.ndim
            if scale.shape[0] != out.shape[axis]:
                return "dequantized", None  # blocked quantization: no simple bound here
            shape = [1] * out.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        return "dequantized", 0.5 * scale
    bounded = [i for i in n.inputs if i and ed.catol(i) is not None]
    if not bounded:
        return "folded", None
    if n.op not in _MOVES or bounded != [n.inputs[0]]:
        return "folded", None  # the bound is dropped: the value is then compared strictly
    v = ed.cval(n.inputs[0])
    if v is None:
        return "folded", None
    feeds = {f"i{k}": ed.cval(i) for k, i in enumerate(n.inputs) if i}
    feeds["i0"] = np.ascontiguousarray(np.broadcast_to(ed.catol(n.inputs[0]), v.shape)).astype(
        v.dtype
    )
    try:
        moved = ReferenceEvaluator(proto).run(None, feeds)[0]
    except Exception:
        return "folded", None
    return "folded", np.asarray(moved, dtype=np.float64)


def const_sources(g: CanonicalGraph, tensor: str) -> tuple[str, ...]:
    c: Const | None = g.consts.get(tensor)
    return c.sources if c is not None else ()
