"""Folding BatchNormalization (and per-channel affine nodes) into a convolution, with
the error bound each derived constant carries."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from scanner.graph.canonical import (
    COMMUTATIVE,  # noqa: F401  (re-exported)
    Node,
)
from scanner.graph.editor import _Editor


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
