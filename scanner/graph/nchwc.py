"""ONNX Runtime's NCHWc layout transform, undone.

At ``ORT_ENABLE_LAYOUT`` / ``ORT_ENABLE_ALL`` ONNX Runtime rewrites 2-D convolutions and
pools into ``com.microsoft.nchwc`` operators on *blocked* tensors: ``ReorderInput``
stores an NCHW tensor with its channels zero-padded to a multiple of the block size ``B``
(8 or 16, machine-dependent) and interleaved in blocks of ``B``; ``ReorderOutput``
(``channels`` = the real count) undoes that. Filters are stored reordered and padded
(``OIHWBiBo`` for a convolution reading a blocked tensor, ``OIHWBo`` for one reading
NCHW and for depthwise ones); a depthwise convolution's ``group`` becomes the padded
channel count; a residual ``Add`` and the activation are fused into the convolution
(``Sum`` input, ``activation`` attribute); elementwise ops on blocked tensors run between
a ``Reshape`` to ``[0, C/B, 0, 0, B]`` and one back to ``[0, C, 0, 0]``.

Each blocked tensor stands for a *logical* NCHW tensor: its first ``C`` channels hold
that tensor, the padding channels hold values nobody reads. The rewrite replaces every
NCHWc operator by the standard operator on the logical tensors:

* a convolution's logical output keeps the channels some reader uses (a
  ``ReorderOutput``'s ``channels``, a later filter's non-zero input columns, what a
  depthwise convolution, pool, residual or elementwise reader passes on); its filter and
  bias are the stored ones un-reordered and cut to those channels, and the filter
  columns of the padding channels must be zero, so padding never reaches a real channel;
* ``ReorderOutput(b, channels=c)`` is the logical tensor (or its first ``c`` channels);
* the Reshape / elementwise / Reshape sandwich is the elementwise op on logical tensors
  (a reshape that splits the channel axis commutes with elementwise ops and their
  broadcasting over the other axes).

The block size is read from the graph (the sandwich's reshape, or padding: ``C`` real
channels stored as ``roundup(C, B)``); the largest block consistent with every padded
shape is used. The rewrite is all or nothing: a blocked tensor read by anything else, an
unknown channel count or an inconsistent shape leaves the graph as stored, and the diff
reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scanner.graph.canonical import Node, topo_order
from scanner.graph.rewrites import _act_node, _Editor
from scanner.graph.shapes import ELEMENTWISE_UNARY

NCHWC = "com.microsoft.nchwc::"
BLOCK_SIZES = (16, 8, 4)
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"}
_CHANNEL_PRESERVING = (
    ELEMENTWISE_UNARY
    | _ELEMENTWISE
    | {
        "GlobalAveragePool",
        "GlobalMaxPool",
        "MaxPool",
        "AveragePool",
        "Resize",
        "Upsample",
        "BatchNormalization",
    }
)
_POOLS = {"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"}


class _Abort(Exception):
    """The graph does not have the shape the rewrite proves things about."""


@dataclass
class _Sandwich:
    """Reshape(a, [0,k,0,0,B]) and Reshape(b, ...) -> elementwise -> Reshape([0,kB,0,0])."""

    inner: list[Node]
    op: Node
    outer: Node
    blocked_inputs: list[str]


@dataclass
class _State:
    block: int = 0
    logical: dict[str, str] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    demand: dict[str, int] = field(default_factory=dict)
    sandwiches: dict[int, _Sandwich] = field(default_factory=dict)
    """By the id of the outer Reshape."""
    followers: dict[int, str] = field(default_factory=dict)
    """Layout-agnostic readers of blocked tensors (``unary``: elementwise on one blocked
    tensor and scalars; ``concat``: channel concatenation), by node id."""
    padded: dict[str, int] = field(default_factory=dict)
    """Stored (padded) channel count of each blocked tensor."""


def unblock_nchwc(ed: _Editor) -> None:
    g = ed.g
    if not any(n.op.startswith(NCHWC) for n in g.nodes.values()):
        return
    g.index()
    scopes = sorted({n.scope for n in g.nodes.values() if n.op.startswith(NCHWC)})
    for scope in scopes:
        try:
            _unblock_scope(ed, scope)
        except _Abort:
            continue
        g.index()


def _unblock_scope(ed: _Editor, scope: str) -> None:
    g = ed.g
    order = topo_order(g, scope)
    st = _State()
    blocked: set[str] = set()
    for n in order:
        if n.op.startswith(NCHWC) and n.op != NCHWC + "ReorderOutput":
            blocked.add(n.outputs[0])
        elif n.op == "Reshape":
            sw = _sandwich(ed, n, blocked)
            if sw is not None:
                st.sandwiches[n.id] = sw
                blocked.add(n.outputs[0])
        elif _follower(ed, n, blocked):
            st.followers[n.id] = "concat" if n.op == "Concat" else "unary"
            blocked.add(n.outputs[0])
    inner_ids = {r.id for sw in st.sandwiches.values() for r in sw.inner} | {
        sw.op.id for sw in st.sandwiches.values()
    }
    inner_ids |= set(st.followers)
    for b in blocked:
        if b in g.outputs:
            raise _Abort
        for cid, _slot in g.consumers.get(b, ()):
            c = g.nodes[cid]
            if not c.op.startswith(NCHWC) and cid not in inner_ids:
                raise _Abort  # a reader that sees the blocked layout itself
    st.block = _block_size(ed, order, st)
    _paddings(ed, order, st)
    _demands(ed, order, st)
    plan: list[tuple[Node, str]] = []
    for n in order:
        if n.op.startswith(NCHWC):
            plan.append((n, n.op[len(NCHWC) :]))
        elif n.id in st.sandwiches:
            plan.append((n, "sandwich"))
        elif n.id in st.followers:
            plan.append((n, st.followers[n.id]))
    # Check everything before the first edit: the rewrite is all or nothing.
    checked = [(n, kind, _check(ed, n, kind, st)) for n, kind in plan]
    removed: list[Node] = []
    for n, kind, spec in checked:
        _apply(ed, n, kind, spec, st)
        removed.append(n)
        if kind == "sandwich":
            sw = st.sandwiches[n.id]
            removed.extend([*sw.inner, sw.op])
            # the reshapes' shapes only parametrized the layout, which is gone
            ed.g.absorbed.update(ed.csrc(*(r.inputs[1] for r in (*sw.inner, sw.outer))))
    for n in removed:
        ed.remove(n)
    ed.counts["undid NCHWc layout (com.microsoft.nchwc operators)"] += len(plan)


# ------------------------------------------------------------------------ analysis

_AGNOSTIC = ELEMENTWISE_UNARY | _ELEMENTWISE
"""Operators that compute each element from the same element of one tensor (and scalar
constants): applied to a blocked tensor they give the blocked result."""


def _follower(ed: _Editor, n: Node, blocked: set[str]) -> bool:
    g = ed.g
    if len(n.outputs) != 1 or not n.inputs:
        return False
    if n.op == "Concat":
        return int(n.attrs.get("axis", 0)) in (1, -3) and all(i in blocked for i in n.inputs)
    if n.op not in _AGNOSTIC or n.inputs[0] not in blocked:
        return False
    for i in n.inputs[1:]:
        if not i:
            continue
        c = g.consts.get(i)
        if c is None or c.numel != 1:
            return False
    return len(n.inputs) == 1 or n.op not in _ELEMENTWISE or n.inputs[1] in g.consts


def _const_ints(ed: _Editor, tensor: str) -> list[int] | None:
    v = ed.cval(tensor)
    if v is None or v.dtype.kind not in "iu":
        return None
    return [int(x) for x in np.ravel(v)]


def _sandwich(ed: _Editor, outer: Node, blocked: set[str]) -> _Sandwich | None:
    g = ed.g
    s4 = _const_ints(ed, outer.inputs[1]) if len(outer.inputs) > 1 else None
    pid = g.producer.get(outer.inputs[0])
    op = g.nodes.get(pid) if pid is not None else None
    if s4 is None or len(s4) != 4 or op is None or op.op not in _ELEMENTWISE:
        return None
    if ed.sole_user(op.outputs[0]) is not outer or len(op.inputs) != 2:
        return None
    inner: list[Node] = []
    shape5 = None
    for t in op.inputs:
        rid = g.producer.get(t)
        r = g.nodes.get(rid) if rid is not None else None
        if r is None or r.op != "Reshape" or ed.sole_user(t) is not op:
            return None
        s5 = _const_ints(ed, r.inputs[1]) if len(r.inputs) > 1 else None
        if r.inputs[0] not in blocked or s5 is None or len(s5) != 5:
            return None
        if shape5 is not None and s5 != shape5:
            return None
        shape5 = s5
        inner.append(r)
    assert shape5 is not None
    _, k, _, _, b = shape5
    if shape5[0] != 0 or shape5[2] != 0 or shape5[3] != 0 or k <= 0 or b <= 0:
        return None
    if s4 != [0, k * b, 0, 0]:
        return None
    return _Sandwich(inner, op, outer, [r.inputs[0] for r in inner])


def _nchw_channels(ed: _Editor, t: str, st: _State, depth: int = 0) -> int | None:
    """Channel count of an NCHW tensor, from static shapes or what produced it."""
    g = ed.g
    shape = ed.shapes.shape(t)
    if shape is not None and len(shape) == 4 and shape[1]:
        return int(shape[1])
    pid = g.producer.get(t)
    if pid is None or depth > 64:
        return None
    n = g.nodes[pid]
    if n.op == NCHWC + "ReorderOutput":
        return int(n.attrs.get("channels", 0)) or None
    if n.op == "Conv" and len(n.inputs) > 1:
        w = g.consts.get(n.inputs[1])
        return w.shape[0] if w is not None and w.shape else None
    if n.op == "Concat" and int(n.attrs.get("axis", 0)) in (1, -3):
        parts = [_nchw_channels(ed, i, st, depth + 1) for i in n.inputs]
        return sum(parts) if all(parts) else None  # type: ignore[arg-type]
    if n.op in _CHANNEL_PRESERVING:
        found = [
            _nchw_channels(ed, i, st, depth + 1) for i in n.inputs[:2] if i and i not in g.consts
        ]
        known = [c for c in found if c]
        return max(known) if known else None
    return None


def _roundup(c: int, b: int) -> int:
    return -(-c // b) * b


def _block_size(ed: _Editor, order: list[Node], st: _State) -> int:
    g = ed.g
    fixed: set[int] = set()
    for sw in st.sandwiches.values():
        fixed.add(_const_ints(ed, sw.inner[0].inputs[1])[-1])  # type: ignore[index]
    candidates = [b for b in BLOCK_SIZES if not fixed or b in fixed]
    for n in order:
        if n.op == NCHWC + "Conv":
            w = g.consts.get(n.inputs[1])
            if w is None or len(w.shape) != 4:
                raise _Abort
            candidates = [b for b in candidates if w.shape[0] % b == 0]
            if _is_blocked_input(ed, n, st) and not _depthwise(n, w.shape):
                candidates = [b for b in candidates if w.shape[1] % b == 0]
                src = _reorder_input_of(ed, n.inputs[0])
                c = _reorder_input_channels(ed, src, st) if src is not None else None
                if c:
                    candidates = [b for b in candidates if _roundup(c, b) == w.shape[1]]
        elif n.op == NCHWC + "ReorderOutput":
            pid = g.producer.get(n.inputs[0])
            p = g.nodes.get(pid) if pid is not None else None
            c = int(n.attrs.get("channels", 0))
            if p is not None and p.op == NCHWC + "Conv" and c:
                w = g.consts.get(p.inputs[1])
                if w is not None:
                    candidates = [b for b in candidates if _roundup(c, b) == w.shape[0]]
    if not candidates:
        raise _Abort
    return max(candidates)


def _reorder_input_channels(ed: _Editor, n: Node, st: _State) -> int | None:
    """Real channel count of a ReorderInput's input (NCHW, or NHWC with channels_last)."""
    if int(n.attrs.get("channels_last", 0)):
        shape = ed.shapes.shape(n.inputs[0])
        return shape[-1] if shape is not None and len(shape) == 4 else None
    return _nchw_channels(ed, n.inputs[0], st)


def _reorder_input_of(ed: _Editor, blocked: str) -> Node | None:
    pid = ed.g.producer.get(blocked)
    p = ed.g.nodes.get(pid) if pid is not None else None
    return p if p is not None and p.op == NCHWC + "ReorderInput" else None


def _is_blocked_input(ed: _Editor, n: Node, st: _State) -> bool:
    pid = ed.g.producer.get(n.inputs[0])
    if pid is None:
        return False
    p = ed.g.nodes[pid]
    if p.op.startswith(NCHWC):
        return p.op != NCHWC + "ReorderOutput"
    return pid in st.sandwiches or pid in st.followers


def _depthwise(n: Node, wshape: tuple[int, ...]) -> bool:
    return int(n.attrs.get("group", 1)) == wshape[0] and wshape[1] == 1 and wshape[0] > 1


def _filter(ed: _Editor, n: Node, st: _State) -> np.ndarray:
    """The stored filter un-reordered to OIHW (still padded)."""
    w = ed.cval(n.inputs[1])
    if w is None or w.ndim != 4:
        raise _Abort
    block = st.block
    o, i, kh, kw = w.shape
    if o % block:
        raise _Abort
    if _is_blocked_input(ed, n, st) and not _depthwise(n, w.shape):
        if i % block:
            raise _Abort
        mem = w.reshape(o // block, i // block, kh, kw, block, block)
        return np.ascontiguousarray(mem.transpose(0, 5, 1, 4, 2, 3).reshape(o, i, kh, kw))
    mem = w.reshape(o // block, i, kh, kw, block)
    return np.ascontiguousarray(mem.transpose(0, 4, 1, 2, 3).reshape(o, i, kh, kw))


def _paddings(ed: _Editor, order: list[Node], st: _State) -> None:
    """The stored channel count of every blocked tensor."""
    g = ed.g
    for n in order:
        out = n.outputs[0] if n.outputs else ""
        kind = n.op[len(NCHWC) :] if n.op.startswith(NCHWC) else ""
        if kind == "ReorderInput":
            c = _reorder_input_channels(ed, n, st)
            if not c:
                raise _Abort
            st.padded[out] = _roundup(c, st.block)
        elif kind == "Conv":
            st.padded[out] = g.consts[n.inputs[1]].shape[0]
        elif kind in _POOLS or st.followers.get(n.id) == "unary":
            st.padded[out] = st.padded[n.inputs[0]]
        elif n.id in st.sandwiches:
            st.padded[out] = st.padded[st.sandwiches[n.id].blocked_inputs[0]]
        elif st.followers.get(n.id) == "concat":
            st.padded[out] = sum(st.padded[i] for i in n.inputs)


def _demands(ed: _Editor, order: list[Node], st: _State) -> None:
    """How many leading channels of each blocked tensor some reader uses."""
    for n in reversed(order):
        out = n.outputs[0] if n.outputs else ""
        if n.op == NCHWC + "ReorderOutput":
            _need(st, n.inputs[0], int(n.attrs.get("channels", 0)))
        elif n.op == NCHWC + "Conv":
            w = _filter(ed, n, st)
            if _is_blocked_input(ed, n, st):
                if _depthwise(n, w.shape):
                    _need(st, n.inputs[0], st.demand.get(out, 0))
                else:
                    cols = np.flatnonzero(np.any(w != 0, axis=(0, 2, 3)))
                    _need(st, n.inputs[0], int(cols[-1]) + 1 if cols.size else 0)
            if len(n.inputs) > 3 and n.inputs[3]:
                _need(st, n.inputs[3], st.demand.get(out, 0))
        elif n.op[len(NCHWC) :] in _POOLS:
            _need(st, n.inputs[0], st.demand.get(out, 0))
        elif n.id in st.sandwiches:
            sw = st.sandwiches[n.id]
            for b in sw.blocked_inputs:
                _need(st, b, st.demand.get(out, 0))
        elif st.followers.get(n.id) == "unary":
            _need(st, n.inputs[0], st.demand.get(out, 0))
        elif st.followers.get(n.id) == "concat":
            # a blocked concatenation only lines up when every part but the last fills
            # its blocks: those parts are read whole
            offset = 0
            for i in n.inputs[:-1]:
                _need(st, i, st.padded[i])
                offset += st.padded[i]
            _need(st, n.inputs[-1], max(st.demand.get(out, 0) - offset, 1))


def _need(st: _State, blocked: str, channels: int) -> None:
    st.demand[blocked] = max(st.demand.get(blocked, 0), channels)


# ------------------------------------------------------------------- check, apply


@dataclass
class _ConvSpec:
    x: str
    weight: np.ndarray
    bias: np.ndarray | None
    group: int
    out_channels: int
    residual: str
    residual_channels: int


def _check(ed: _Editor, n: Node, kind: str, st: _State) -> object:
    """Validate one operator and compute what its logical form needs; raises _Abort."""
    out = n.outputs[0] if n.outputs else ""
    if kind == "ReorderInput":
        c = _reorder_input_channels(ed, n, st)
        if not c:
            raise _Abort
        nhwc = bool(int(n.attrs.get("channels_last", 0)))
        st.logical[out] = out + "~logical" if nhwc else n.inputs[0]
        st.channels[out] = c
        return nhwc
    if kind == "ReorderOutput":
        c = int(n.attrs.get("channels", 0))
        if int(n.attrs.get("channels_last", 0)) or n.inputs[0] not in st.channels:
            raise _Abort
        if not 0 < c <= st.channels[n.inputs[0]]:
            raise _Abort
        return c
    if kind == "Conv":
        return _check_conv(ed, n, st)
    if kind in _POOLS:
        if n.inputs[0] not in st.channels:
            raise _Abort
        st.logical[out], st.channels[out] = out + "~logical", st.channels[n.inputs[0]]
        return None
    if kind == "unary":
        if n.inputs[0] not in st.channels:
            raise _Abort
        st.logical[out], st.channels[out] = out + "~logical", st.channels[n.inputs[0]]
        return None
    if kind == "concat":
        counts = [st.channels.get(i) for i in n.inputs]
        if any(c is None for c in counts):
            raise _Abort
        if any(st.channels[i] != st.padded[i] for i in n.inputs[:-1]):
            raise _Abort  # a padded part in the middle: not a concatenation of channels
        st.logical[out], st.channels[out] = out + "~logical", sum(counts)  # type: ignore[arg-type]
        return None
    if kind == "sandwich":
        sw = st.sandwiches[n.id]
        counts = {st.channels.get(b) for b in sw.blocked_inputs}
        if len(counts) != 1 or None in counts:
            raise _Abort
        st.logical[out], st.channels[out] = out + "~logical", counts.pop()  # type: ignore[assignment]
        return None
    raise _Abort


def _check_conv(ed: _Editor, n: Node, st: _State) -> _ConvSpec:
    out = n.outputs[0]
    full = _filter(ed, n, st)
    o_pad = full.shape[0]
    blocked_in = _is_blocked_input(ed, n, st)
    if blocked_in:
        if n.inputs[0] not in st.channels:
            raise _Abort
        x_channels = st.channels[n.inputs[0]]
    else:
        x_channels = full.shape[1]
    bias_full = ed.cval(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
    if bias_full is not None and bias_full.shape != (o_pad,):
        raise _Abort
    if blocked_in and _depthwise(n, full.shape):
        o = x_channels
        if o > o_pad:
            raise _Abort
        weight, group = full[:o], o
    else:
        if int(n.attrs.get("group", 1)) != 1:
            raise _Abort
        o = st.demand.get(out, 0)
        if not 0 < o <= o_pad or x_channels > full.shape[1]:
            raise _Abort
        if blocked_in and np.any(full[:o, x_channels:]):
            raise _Abort  # a padding channel would reach a real one
        weight, group = full[:o, :x_channels], 1
    residual, residual_channels = "", 0
    if len(n.inputs) > 3 and n.inputs[3]:
        residual = n.inputs[3]
        residual_channels = st.channels.get(residual, 0)
        if residual_channels < o:
            raise _Abort
    st.logical[out], st.channels[out] = out + "~logical", o
    return _ConvSpec(
        n.inputs[0],
        weight,
        None if bias_full is None else bias_full[:o],
        group,
        o,
        residual,
        residual_channels,
    )


def _first_channels(ed: _Editor, like: Node, x: str, have: int, want: int) -> str:
    if have == want:
        return x
    from scanner.graph.slicing import _slice_node

    part = ed.fresh(like.scope, "channels")
    _slice_node(ed, like, x, [(1, 0, want, 1)], part, (), "/channels")
    return part


def _apply(ed: _Editor, n: Node, kind: str, spec: object, st: _State) -> None:
    out = n.outputs[0]
    if kind == "ReorderInput":
        if spec:  # NHWC input: the logical tensor is its NCHW transpose
            ed.node(n, "Transpose", [n.inputs[0]], [st.logical[out]], {"perm": [0, 3, 1, 2]})
        return  # otherwise its logical tensor is its input
    if kind == "ReorderOutput":
        src = n.inputs[0]
        x = _first_channels(ed, n, st.logical[src], st.channels[src], int(spec))  # type: ignore[call-overload]
        ed.alias(out, x)
        return
    if kind == "Conv":
        assert isinstance(spec, _ConvSpec)
        # read the input now: an earlier ReorderOutput may have been replaced meanwhile
        x = st.logical.get(n.inputs[0], n.inputs[0])
        srcs = ed.csrc(n.inputs[1])
        w = ed.const(n.scope, spec.weight, srcs, "nchwc-reorder")
        inputs = [x, w]
        if spec.bias is not None:
            inputs.append(ed.const(n.scope, spec.bias, ed.csrc(n.inputs[2]), "nchwc-reorder"))
        attrs = {
            k: v
            for k, v in n.attrs.items()
            if k not in ("activation", "activation_params", "group", "kernel_shape")
        }
        if spec.group != 1:
            attrs["group"] = spec.group
        act = n.attrs.get("activation", b"")
        act = act.decode() if isinstance(act, bytes) else str(act)
        params = list(n.attrs.get("activation_params", []) or [])
        final = st.logical[out]
        y = ed.node(n, "Conv", inputs, None if (act or spec.residual) else [final], attrs)
        y_out = y.outputs[0]
        if spec.residual:
            r = _first_channels(
                ed,
                n,
                st.logical[n.inputs[3]],
                spec.residual_channels,
                spec.out_channels,
            )
            y_out = ed.node(n, "Add", [y_out, r], None if act else [final], {}, "/sum").outputs[0]
        if act:
            _act_node(ed, n, act, params, y_out, [final])
        return
    if kind in _POOLS:
        ed.node(n, kind, [st.logical[n.inputs[0]]], [st.logical[out]], dict(n.attrs))
        return
    if kind == "unary":
        ins = [st.logical[n.inputs[0]], *n.inputs[1:]]
        ed.node(n, n.op, ins, [st.logical[out]], dict(n.attrs))
        return
    if kind == "concat":
        ins = [st.logical[i] for i in n.inputs]
        ed.node(n, "Concat", ins, [st.logical[out]], {"axis": 1})
        return
    if kind == "sandwich":
        sw = st.sandwiches[n.id]
        ins = [st.logical[b] for b in sw.blocked_inputs]
        ed.node(sw.op, sw.op.op, ins, [st.logical[out]], dict(sw.op.attrs))
        return
    raise AssertionError(kind)
