"""Structural diff of two ONNX graphs in canonical form.

Nodes are matched by what they compute, never by name: first by the hash of their
upstream cone, then (for nodes downstream of a change) by the hash of what consumes them
up to the outputs, then by propagation from matched neighbours. What is left over is
grouped into connected regions, and each region is explained:

- an added region that reads a graph input and merges into the original computation is
  an *injected branch* (ShadowLogic, TrojanNet, DeepPayload, architectural backdoors);
- an added region that only re-routes graph inputs into the stem is *pre-processing*,
  one that only reads graph outputs and produces graph outputs is *post-processing*;
- an added region that replaces a removed one with the same boundary, using only
  operators optimizers fuse into, is a *fusion* (equivalent rewrite);
- a removed region that only computes from constants and tensor shapes, replaced by a
  constant, is *constant folding*;
- anything else is unexplained structure.

Matched nodes whose constants are stored under other names or were derived (a fused
Conv+BatchNormalization weight) are compared numerically, and only verified tensors are
explained to the weight diff.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scanner.graph.canonical import (
    COMMUTATIVE,
    SMALL_CONST,
    CanonicalGraph,
    Const,
    Node,
    attr_signature,
    compute_hashes,
)

SELECTION_OPS = {
    "Where",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "If",
    "Loop",
    "Scan",
    "BitwiseAnd",
    "BitwiseOr",
    "IsInf",
    "IsNaN",
}
MERGE_OPS = {"Add", "Mul", "Where", "Max", "Min", "Concat", "Sum", "Sub", "Div", "Mean"}
FUSED_OPS = {
    "Conv",
    "MatMul",
    "Gemm",
    "Split",
    "Add",
    "Mul",
    "Relu",
    "Sigmoid",
    "Clip",
    "HardSigmoid",
    "Transpose",
    "Reshape",
    "LayerNormalization",
    "Softmax",
    "Erf",
    "Div",
    "Sub",
    "Pow",
    "Sqrt",
    "ReduceMean",
    "Tanh",
    "Concat",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Cast",
    "com.microsoft::FusedConv",
    "com.microsoft::FusedGemm",
    "com.microsoft::FusedMatMul",
    "com.microsoft::Gelu",
    "com.microsoft::FastGelu",
    "com.microsoft::BiasGelu",
    "com.microsoft::SkipLayerNormalization",
    "com.microsoft::Attention",
    "com.microsoft::MultiHeadAttention",
    "com.microsoft::BiasSoftmax",
    "com.microsoft::QuickGelu",
    "com.microsoft::MatMulIntegerToFloat",
    "com.microsoft::DynamicQuantizeMatMul",
    "com.microsoft::EmbedLayerNormalization",
    "com.microsoft::BiasAdd",
    "com.microsoft::NhwcConv",
    "com.microsoft::QLinearConv",
    "com.microsoft::RotaryEmbedding",
    "com.microsoft::GroupQueryAttention",
}
"""Operators an optimizer may put in place of an equivalent region (plus the ordinary ops
such a region is made of). Selection and comparison operators are never among them."""
SHAPE_OPS = {
    "Shape",
    "Size",
    "Gather",
    "Slice",
    "Concat",
    "Cast",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Mul",
    "Add",
    "Sub",
    "Div",
    "ConstantOfShape",
    "Range",
    "Equal",
    "Where",
    "Expand",
    "ReduceProd",
    "Floor",
    "Ceil",
    "Max",
    "Min",
    "Neg",
    "Abs",
    "Identity",
    "Not",
    "If",
}
PARAMETER_SLOTS: dict[str, frozenset[int]] = {
    op: frozenset(slots)
    for op, slots in {
        "Conv": (1, 2),
        "ConvTranspose": (1, 2),
        "Gemm": (0, 1, 2),
        "MatMul": (0, 1),
        "BatchNormalization": (1, 2, 3, 4),
        "InstanceNormalization": (1, 2),
        "LayerNormalization": (1, 2),
        "GroupNormalization": (1, 2),
        "LSTM": (1, 2, 3),
        "GRU": (1, 2, 3),
        "RNN": (1, 2, 3),
        "PRelu": (1,),
        "Gather": (0,),
        "Einsum": (0, 1, 2),
        "com.microsoft::FusedConv": (1, 2),
        "com.microsoft::FusedGemm": (0, 1, 2),
        "com.microsoft::FusedMatMul": (0, 1),
        "com.microsoft::SkipLayerNormalization": (2, 3, 4),
        "com.microsoft::Attention": (1, 2),
        "com.microsoft::EmbedLayerNormalization": (2, 3, 4, 5, 6),
    }.items()
}
"""Input slots of an operator that hold learned parameters (weights, biases, normalization
statistics, recurrent matrices, embedding tables)."""
ELEMENTWISE_AFFINE = {"Add", "Sub", "Mul", "Div"}
WEIGHT_RTOL = 1e-4
"""Relative tolerance (to the tensor's max |value|) for a derived weight to equal a stored one:
float32 rounding of the fused products, far below any edit that changes behaviour."""


@dataclass(frozen=True)
class NodeRef:
    name: str
    op: str
    scope: str = ""


@dataclass(frozen=True)
class Region:
    """A connected set of added (deployed) or removed (trusted) nodes and its boundary."""

    side: str
    """``deployed`` for added nodes, ``trusted`` for removed ones."""
    nodes: tuple[NodeRef, ...]
    kind: str
    """injected, pre-processing, post-processing, fusion, folding, unexplained."""
    reads_inputs: tuple[str, ...]
    taps: tuple[str, ...]
    """Original tensors (trusted names) the region reads."""
    writes_into: tuple[str, ...]
    """Original tensors (trusted names) the region's outputs stand in for."""
    merge_ops: tuple[str, ...]
    merge_nodes: tuple[str, ...]
    reason: str
    tree: str = ""
    replaces: tuple[NodeRef, ...] = ()
    """For a fusion: the removed nodes this region stands in for."""

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(sorted({n.op for n in self.nodes}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "kind": self.kind,
            "nodes": [n.name for n in self.nodes[:200]],
            "n_nodes": len(self.nodes),
            "ops": list(self.ops),
            "reads_inputs": list(self.reads_inputs),
            "taps": list(self.taps[:50]),
            "writes_into": list(self.writes_into),
            "merge_ops": list(self.merge_ops),
            "merge_nodes": list(self.merge_nodes),
            "reason": self.reason,
            "replaces": [n.name for n in self.replaces[:200]],
        }


@dataclass(frozen=True)
class ChangedNode:
    trusted: NodeRef
    deployed: NodeRef
    reason: str


@dataclass(frozen=True)
class WeightCheck:
    trusted: tuple[str, ...]
    deployed: tuple[str, ...]
    derivation: str
    max_rel_err: float | None
    """``None`` when the values could not be read (external data without a loader)."""
    ok: bool
    quantized: bool = False
    """Equal only within quantization rounding: the structure is equivalent, but the
    weights changed, which is the claims analyzer's business (``--claim quantize:..``)."""
    round_trip: tuple[str, ...] = ()
    """Deployed scales / zero points of run-time round trips of float constants in it."""
    spread: float | None = None
    """For a failed check: the fraction of elements outside the tolerance."""
    rows: tuple[int, ...] = ()
    """For a failed check: indices along the first axis (output channels, rows) holding
    elements outside the tolerance."""


@dataclass(frozen=True)
class GraphDiff:
    n_trusted: int
    n_deployed: int
    n_matched: int
    regions: tuple[Region, ...]
    changed: tuple[ChangedNode, ...]
    weight_checks: tuple[WeightCheck, ...]
    explained: dict[str, str] = field(default_factory=dict)
    """Tensor keys (both sides) accounted for by verified equivalent rewrites."""
    trusted_notes: tuple[str, ...] = ()
    deployed_notes: tuple[str, ...] = ()
    io_changes: tuple[str, ...] = ()

    @property
    def added(self) -> tuple[NodeRef, ...]:
        return tuple(n for r in self.regions if r.side == "deployed" for n in r.nodes)

    @property
    def removed(self) -> tuple[NodeRef, ...]:
        return tuple(n for r in self.regions if r.side == "trusted" for n in r.nodes)

    @property
    def identical(self) -> bool:
        return not self.regions and not self.changed and not self.io_changes


def is_parameter(op: str, slot: int, c: Const) -> bool:
    """Whether constant ``c`` read at input ``slot`` of an ``op`` node is a model parameter
    (its values are the weight diff's business) rather than a structural constant.

    The role decides, not the name: a float tensor in a parameter slot (Conv weight and
    bias, BatchNormalization statistics, recurrent matrices, an embedding table), or a
    float vector in elementwise arithmetic (per-channel scale / shift of a layer: at least
    one axis longer than 1). Scalars in arithmetic, Clip bounds, comparison constants,
    exponents, shapes, axes, pads, slice bounds and integer constants are structure: a
    changed one changes what the graph computes, and is reported as a graph change."""
    if c.value_kind() != "f":
        return False
    if slot in PARAMETER_SLOTS.get(op, ()):
        return op != "Gather" or len(c.shape) >= 2  # a float lookup table, not indices
    if op in ELEMENTWISE_AFFINE:
        return any(dim > 1 for dim in c.shape)
    return False


def _ref(n: Node) -> NodeRef:
    return NodeRef(n.name, n.op, n.scope)


class _Matcher:
    def __init__(self, t: CanonicalGraph, d: CanonicalGraph) -> None:
        self.t, self.d = t, d
        self.d2t: dict[int, int] = {}
        self.t2d: dict[int, int] = {}
        self.changed: list[ChangedNode] = []

    def pair(self, ti: int, di: int) -> None:
        self.d2t[di] = ti
        self.t2d[ti] = di

    def by_hash(self, t_hash: dict[int, str], d_hash: dict[int, str]) -> None:
        groups: dict[str, list[int]] = defaultdict(list)
        for nid in sorted(t_hash):
            if nid not in self.t2d:
                groups[t_hash[nid]].append(nid)
        for nid in sorted(d_hash):
            if nid in self.d2t:
                continue
            bucket = groups.get(d_hash[nid])
            if bucket:
                pick = bucket[0] if len(bucket) == 1 else self._closest(bucket, nid)
                bucket.remove(pick)
                self.pair(pick, nid)

    def _closest(self, bucket: list[int], di: int) -> int:
        """Among trusted nodes that compute alike (a transformer's query, key and value
        projections share their whole upstream cone), the one that also agrees on what
        consumes it, then on which stored weights it reads, then on their values."""
        t, d = self.t, self.d
        dn = d.nodes[di]
        d_src = [d.consts[i].sources for i in dn.inputs if i in d.consts]
        d_fp = [_fingerprint(d.consts[i]) for i in dn.inputs if i in d.consts]

        def score(ti: int) -> tuple[int, int, int]:
            tn = t.nodes[ti]
            t_src = [t.consts[i].sources for i in tn.inputs if i in t.consts]
            same_fp = (
                bool(d_fp)
                and [_fingerprint(t.consts[i]) for i in tn.inputs if i in t.consts] == d_fp
            )
            return (
                int(t.dhash.get(ti) == d.dhash.get(di)),
                int(bool(d_src) and t_src == d_src),
                int(same_fp),
            )

        return max(bucket, key=score)  # max keeps the first of equals: stored order

    def anchors(self) -> None:
        """Pair nodes whose local form (operator, attributes, constant inputs) is unique on
        both sides: starting points when a wrapper changed every cone and every consumer."""

        def local(g: CanonicalGraph, n: Node) -> str:
            consts = tuple(g.consts[i].signature() if i in g.consts else "*" for i in n.inputs)
            return attr_signature(n) + repr(consts) + n.scope

        def unique(g: CanonicalGraph, done: dict[int, int]) -> dict[str, int]:
            seen: dict[str, list[int]] = defaultdict(list)
            for n in g.nodes.values():
                if n.id not in done:
                    seen[local(g, n)].append(n.id)
            return {k: v[0] for k, v in seen.items() if len(v) == 1}

        ut, ud = unique(self.t, self.t2d), unique(self.d, self.d2t)
        for key, di in ud.items():
            if key in ut:
                self.pair(ut[key], di)

    def tensor_partner(self, dt: str) -> str | None:
        """The trusted tensor that deployed tensor ``dt`` corresponds to."""
        d, t = self.d, self.t
        if dt in d.inputs:
            return dt if dt in t.inputs else None
        p = d.producer.get(dt)
        if p is not None and p in self.d2t:
            dn, tn = d.nodes[p], t.nodes[self.d2t[p]]
            k = dn.outputs.index(dt)
            return tn.outputs[k] if k < len(tn.outputs) else None
        return None

    def propagate(self) -> None:
        # strict first (every input corresponds), so an injected node that reads one
        # original tensor never takes the place of the original node beside it
        self._propagate(strict=True)
        self._propagate(strict=False)

    def _consistent(self, tn: Node, dn: Node, strict: bool) -> bool:
        """Whether ``dn`` may stand for ``tn`` given what is matched so far: no input of
        one corresponds to a different tensor of the other; ``strict``: every input has a
        known counterpart."""
        if len(tn.inputs) != len(dn.inputs):
            return False
        orders = [list(tn.inputs)]
        if tn.op in COMMUTATIVE and len(tn.inputs) == 2:
            orders.append(list(reversed(tn.inputs)))
        for t_ins in orders:
            ok = True
            for ti, di in zip(t_ins, dn.inputs, strict=True):
                if not ti and not di:
                    continue
                if ti in self.t.consts and di in self.d.consts:
                    continue  # constants are compared after matching
                partner = self.tensor_partner(di) if di else None
                if partner is not None:
                    ok = partner == ti
                elif strict:
                    ok = False
                else:  # unknown deployed input: the trusted one must not be taken
                    tp = self.t.producer.get(ti)
                    ok = tp is None or tp not in self.t2d
                if not ok:
                    break
            if ok:
                return True
        return False

    def _propagate(self, strict: bool) -> None:
        t, d = self.t, self.d
        t_sig = {nid: attr_signature(n) for nid, n in t.nodes.items()}
        progress = True
        while progress:
            progress = False
            for dn in list(d.nodes.values()):
                if dn.id in self.d2t:
                    continue
                sig = attr_signature(dn)
                cands: list[int] = []
                for slot, dt in enumerate(dn.inputs):
                    tt = self.tensor_partner(dt) if dt else None
                    if tt is None:
                        continue
                    for cid, _s in t.consumers.get(tt, ()):
                        if cid not in self.t2d and t.nodes[cid].scope == dn.scope:
                            cands.append(cid)
                    del slot
                for k, o in enumerate(dn.outputs):
                    for cid, cslot in d.consumers.get(o, ()):
                        tc = self.d2t.get(cid)
                        if tc is None or cslot < 0:
                            continue
                        tin = t.nodes[tc].inputs
                        if cslot < len(tin):
                            p = t.producer.get(tin[cslot])
                            if p is not None and p not in self.t2d:
                                tn = t.nodes[p]
                                if k < len(tn.outputs) and tn.outputs[k] == tin[cslot]:
                                    cands.append(p)
                same = list(
                    dict.fromkeys(
                        c
                        for c in cands
                        if t_sig[c] == sig and self._consistent(t.nodes[c], dn, strict)
                    )
                )
                if same:
                    self.pair(same[0] if len(same) == 1 else self._closest(same, dn.id), dn.id)
                    progress = True
                    continue
                if strict:
                    continue
                same_op = [c for c in cands if t.nodes[c].op == dn.op]
                if same_op and self._inputs_correspond(t.nodes[same_op[0]], dn):
                    self.pair(same_op[0], dn.id)
                    self.changed.append(
                        ChangedNode(_ref(t.nodes[same_op[0]]), _ref(dn), "attributes changed")
                    )
                    progress = True

    def _inputs_correspond(self, tn: Node, dn: Node) -> bool:
        if len(tn.inputs) != len(dn.inputs):
            return False
        for ti, di in zip(tn.inputs, dn.inputs, strict=True):
            if di in self.d.consts and ti in self.t.consts:
                continue
            if self.tensor_partner(di) != ti:
                return False
        return True


def diff_graphs(t: CanonicalGraph, d: CanonicalGraph) -> GraphDiff:
    """Match, group and explain the differences between two canonical graphs."""
    m = _match(t, d)
    noop: list[int] = []
    for _ in range(8):
        # A trusted Clip / Relu made a no-op by the deployed side's QuantizeLinear: drop it
        # from (a copy of) the trusted graph and match again, so what follows it matches
        # node for node; that can reveal the next one, hence the loop.
        found = _quantized_noop_activations(m)
        if not found:
            break
        noop.extend(found)
        t = _without_activations(t, found)
        m = _match(t, d)
    changed = list(m.changed)
    checks: list[WeightCheck] = []
    explained: dict[str, str] = {}
    # Constants of matched nodes: values that differ in small constants change behaviour;
    # stored-under-another-name or derived weights are compared numerically.
    for di, ti in sorted(m.d2t.items()):
        dn, tn = d.nodes[di], t.nodes[ti]
        for ci, (tt, dt) in enumerate(zip(tn.inputs, dn.inputs, strict=False)):
            ct, cd = t.consts.get(tt), d.consts.get(dt)
            if ct is None or cd is None:
                continue
            param = is_parameter(tn.op, ci, ct) and ct.dtype == cd.dtype and ct.shape == cd.shape
            if ct.sources == cd.sources and ct.derivation == cd.derivation == "stored":
                if ct.signature() != cd.signature() and not param:
                    changed.append(ChangedNode(_ref(tn), _ref(dn), f"constant input {ci} differs"))
                continue  # the same stored tensor: the weight diff compares its values
            if param and ct.sources == cd.sources and ct.derivation == cd.derivation:
                # Derived alike from the same stored tensors on both sides (the same unfused
                # Conv -> BatchNormalization on each): no rewrite to verify. Changed values
                # are changed parameters, which the weight diff pairs and classifies.
                continue
            check = _compare_values(ct, cd)
            if not check.ok and ct.numel <= SMALL_CONST:
                # a small constant (threshold, shape, trigger value) that is not the same
                # value up to rounding changes what the node computes
                changed.append(ChangedNode(_ref(tn), _ref(dn), f"constant input {ci} differs"))
                continue
            checks.append(check)
            if check.ok and not check.quantized:
                for key in (*check.trusted, *check.deployed):
                    explained[key] = "equivalent rewrite"
    # A fold derives several constants from the same stored tensors (a Conv+BN fold gives
    # a weight and a bias): a key is explained only if no check it entered failed or was
    # only equal within quantization rounding.
    withheld = {k for c in checks if not c.ok or c.quantized for k in (*c.trusted, *c.deployed)}
    # ... except the parameters of a run-time quantize/dequantize round trip of a float
    # constant, proven harmless by an ``ok`` check (no element moved by more than half a
    # step, so no saturation): no stored quantization for a claim to verify.
    trips = {k for c in checks if c.ok for k in c.round_trip if k not in c.trusted}
    withheld -= trips - {k for c in checks if not c.ok for k in (*c.trusted, *c.deployed)}
    for key in sorted(trips):
        explained.setdefault(key, "equivalent rewrite")
    # A tensor some remaining node still reads (directly or through a derived value) is
    # compared where it is read, never absorbed.
    for g in (t, d):
        for key in sorted(g.absorbed - _live_sources(g)):
            explained.setdefault(key, "equivalent rewrite")
    for key in sorted(t.unused | d.unused):
        explained.setdefault(key, "unused by the graph")
    explained = {k: v for k, v in explained.items() if k not in withheld}
    added = [n for n in d.nodes.values() if n.id not in m.d2t]
    removed = [n for n in t.nodes.values() if n.id not in m.t2d]
    regions = [*_explain_added(m, added), *_explain_removed(m, removed)]
    regions = _pair_fusions(m, regions)
    # Regions paired by boundary ("fusion", "folding") are not proven: their tensors stay
    # unexplained, and the analyzer says equivalence could not be shown.
    explained = {k: v for k, v in explained.items() if k not in withheld}
    t_notes = list(t.notes)
    if noop:
        t_notes.append(
            f"removed Clip/Relu made no-ops by the deployed QuantizeLinear range: {len(noop)}"
        )
    io: list[str] = []
    # Inputs are bound by name; one that nothing reads may come or go freely.
    t_in = {i for i in t.inputs if t.consumers.get(i)}
    d_in = {i for i in d.inputs if d.consumers.get(i)}
    if t_in != d_in:
        io.append(f"graph inputs read {sorted(t_in)} -> {sorted(d_in)}")
    if t.output_names != d.output_names:
        io.append(f"graph outputs {t.output_names} -> {d.output_names}")
    return GraphDiff(
        n_trusted=len(t.nodes),
        n_deployed=len(d.nodes),
        n_matched=len(m.d2t),
        regions=tuple(regions),
        changed=tuple(changed),
        weight_checks=tuple(checks),
        explained=explained,
        trusted_notes=tuple(t_notes),
        deployed_notes=tuple(d.notes),
        io_changes=tuple(io),
    )


def _live_sources(g: CanonicalGraph) -> set[str]:
    read = {i for n in g.nodes.values() for i in (*n.inputs, *n.free)}
    return {key for tid, c in g.consts.items() if tid in read for key in c.sources}


def _match(t: CanonicalGraph, d: CanonicalGraph) -> _Matcher:
    m = _Matcher(t, d)
    m.by_hash(t.nhash, d.nhash)
    m.by_hash(t.dhash, d.dhash)
    m.propagate()
    m.anchors()
    m.propagate()
    return m


def _clip_interval(g: CanonicalGraph, n: Node) -> tuple[float, float] | None:
    """The interval a Relu / Clip keeps (``None`` for other nodes or unknown bounds)."""
    if n.op == "Relu":
        return 0.0, float("inf")
    if n.op != "Clip":
        return None
    bounds = []
    for slot, default in ((1, -float("inf")), (2, float("inf"))):
        t = n.inputs[slot] if len(n.inputs) > slot else ""
        if not t:
            bounds.append(default)
            continue
        c = g.consts.get(t)
        v = c.value() if c is not None else None
        if v is None or np.asarray(v).size != 1:
            return None  # a computed bound: nothing to prove
        bounds.append(float(np.asarray(v, dtype=np.float64).ravel()[0]))
    return bounds[0], bounds[1]


def _quantized_noop_activations(m: _Matcher) -> list[int]:
    """Unmatched trusted Clip / Relu nodes whose input's deployed counterpart is read only
    by QuantizeLinear -> DequantizeLinear pairs representing an interval inside the clip
    interval: on the quantized path the clip changes nothing (clamp to [lo, hi] after
    clamp to [a, b] is clamp to [lo, hi] when [lo, hi] lies in [a, b]). The range may
    exceed the interval by float rounding of the scale, at most half a step, which is
    within the rounding the quantization introduces anyway. Anything else stays a change."""
    t, d = m.t, m.d
    out: list[int] = []
    for n in t.nodes.values():
        if n.id in m.t2d or n.scope or not n.inputs or n.outputs[0] in t.outputs:
            continue
        interval = _clip_interval(t, n)
        if interval is None:
            continue
        x = n.inputs[0]
        if x in t.inputs:
            dx = x if x in d.inputs else None
        else:
            p = t.producer.get(x)
            dp = m.t2d.get(p) if p is not None else None
            if dp is None:
                continue
            k = t.nodes[p].outputs.index(x)
            dx = d.nodes[dp].outputs[k] if k < len(d.nodes[dp].outputs) else None
        qr = d.qrange.get(dx) if dx else None
        if qr is None:
            continue
        lo, hi, half_step = qr
        if lo >= interval[0] - half_step and hi <= interval[1] + half_step:
            out.append(n.id)
    return out


def _without_activations(t: CanonicalGraph, ids: list[int]) -> CanonicalGraph:
    """A copy of ``t`` with the given single-input activations replaced by their input;
    their constant bounds are absorbed (they parametrized nodes shown to be no-ops)."""
    nodes = {k: replace(v, inputs=list(v.inputs)) for k, v in t.nodes.items()}
    absorbed = set(t.absorbed)
    for nid in ids:
        n = nodes.pop(nid)
        src, out = n.inputs[0], n.outputs[0]
        for other in nodes.values():
            if out in other.inputs:
                other.inputs = [src if i == out else i for i in other.inputs]
            if out in other.free:
                other.free = tuple(src if i == out else i for i in other.free)
        for i in n.inputs[1:]:
            c = t.consts.get(i)
            if c is not None:
                absorbed.update(c.sources)
    g = replace(
        t, nodes=nodes, absorbed=absorbed, uhash={}, nhash={}, dhash={}, producer={}, consumers={}
    )
    compute_hashes(g)
    return g


def _fingerprint(c: Any) -> str:
    """A cheap value fingerprint of a constant (a strided sample, 4 significant digits):
    tells apart weights of equal shape without hashing them whole."""
    v = c.value()
    if v is None:
        return "?"
    flat = np.asarray(v).reshape(-1)
    sample = flat[:: max(1, flat.size // 64)][:64]
    if sample.dtype.kind == "f":
        return ",".join(f"{x:.4g}" for x in sample.astype(np.float64))
    return ",".join(str(x) for x in sample.tolist())


def _compare_values(ct: Any, cd: Any) -> WeightCheck:
    a, b = ct.value(), cd.value()
    derivation = cd.derivation if cd.derivation != "stored" else ct.derivation
    if a is None or b is None or a.shape != b.shape:
        return WeightCheck(ct.sources, cd.sources, derivation, None, False)
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(a64))) if a64.size else 0.0
    err = float(np.max(np.abs(a64 - b64))) if a64.size else 0.0
    rel = err / scale if scale > 0 else err
    tol = WEIGHT_RTOL if a.dtype.kind == "f" or b.dtype.kind == "f" else 0.0
    bounds = [np.broadcast_to(c.atol, a.shape) for c in (ct, cd) if c.atol is not None]
    trip = tuple(dict.fromkeys((*ct.round_trip, *cd.round_trip)))
    if bounds and a.dtype.kind == "f" and b.dtype.kind == "f":
        # Quantized on one side: each element within its rounding bound (half a step,
        # scaled by any fold), plus float rounding. Per element, so an edit hidden in one
        # channel of a quantized weight is not averaged away.
        bound = sum(bounds) * (1 + 1e-3) + WEIGHT_RTOL * scale
        outside = np.abs(a64 - b64) > bound
        ok = not bool(outside.any())
        return WeightCheck(
            ct.sources,
            cd.sources,
            derivation,
            rel,
            ok,
            quantized=True,
            round_trip=trip,
            spread=None if ok else float(outside.mean()),
            rows=() if ok else _rows_of(outside),
        )
    ok = rel <= tol
    if ok:
        return WeightCheck(ct.sources, cd.sources, derivation, rel, ok, round_trip=trip)
    outside = np.abs(a64 - b64) > tol * max(scale, 1e-30)
    return WeightCheck(
        ct.sources,
        cd.sources,
        derivation,
        rel,
        ok,
        round_trip=trip,
        spread=float(outside.mean()),
        rows=_rows_of(outside),
    )


def _rows_of(outside: np.ndarray) -> tuple[int, ...]:
    """First-axis indices with an element outside the tolerance (a weight's output
    channels), so a failed check names where the edit is, not only the tensor."""
    if outside.ndim == 0:
        return ()
    return tuple(int(i) for i in np.flatnonzero(outside.reshape(outside.shape[0], -1).any(axis=1)))


# --------------------------------------------------------------------------- regions


def _components(g: CanonicalGraph, nodes: list[Node]) -> list[list[Node]]:
    ids = {n.id for n in nodes}
    parent = {n.id: n.id for n in nodes}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n in nodes:
        for i in (*n.inputs, *n.free):
            p = g.producer.get(i)
            if p in ids:
                parent[find(p)] = find(n.id)  # type: ignore[arg-type]
    groups: dict[int, list[Node]] = defaultdict(list)
    for n in nodes:
        groups[find(n.id)].append(n)
    return sorted(groups.values(), key=lambda c: min(x.id for x in c))


def _boundary(g: CanonicalGraph, comp: list[Node]) -> tuple[list[str], list[str]]:
    ids = {n.id for n in comp}
    ext_in: list[str] = []
    for n in comp:
        for i in (*n.inputs, *n.free):
            if i and g.producer.get(i) not in ids and i not in ext_in:
                ext_in.append(i)
    ext_out: list[str] = []
    for n in comp:
        for o in n.outputs:
            if not o:
                continue
            users = [c for c, _ in g.consumers.get(o, ()) if c not in ids]
            if users or o in g.outputs or any(o in b.outputs for b in g.bodies.values()):
                ext_out.append(o)
    return ext_in, ext_out


def _explain_added(m: _Matcher, added: list[Node]) -> Iterable[Region]:
    t, d = m.t, m.d
    t_inputs_readers = {i: [c for c, _ in t.consumers.get(i, ())] for i in t.inputs}
    for comp in _components(d, added):
        ids = {n.id for n in comp}
        ext_in, ext_out = _boundary(d, comp)
        reads = tuple(i for i in ext_in if i in d.inputs)
        taps = tuple(
            p
            for i in ext_in
            if i not in d.consts and i not in d.inputs
            for p in [m.tensor_partner(i)]
            if p
        )
        writes: list[str] = []
        merge_nodes: list[Node] = []
        for o in ext_out:
            producer = d.nodes[d.producer[o]]
            stands_for = _stands_for(m, o)
            writes.extend(s for s in stands_for if s not in writes)
            if producer not in merge_nodes:
                merge_nodes.append(producer)
        ops = {n.op for n in comp}
        input_is_stem = all(all(c in ids for c, _ in d.consumers.get(i, ())) for i in reads)
        writes_inputs = bool(writes) and all(w in t.inputs for w in writes)
        on_outputs = bool(ext_out) and all(o in d.outputs for o in ext_out)
        taps_outputs = bool(taps) and all(tp in t.outputs for tp in taps)
        if reads and writes_inputs and input_is_stem:
            kind, reason = "pre-processing", "re-routes graph inputs into the original stem"
        elif not reads and on_outputs and taps_outputs and not (ops & SELECTION_OPS):
            kind, reason = "post-processing", "reads only the original outputs"
        elif reads and writes and not writes_inputs and _replaces_readers(m, reads):
            # trusted readers of those inputs are gone too: the region takes the place of
            # original structure (a rewrite nothing proves), it adds no branch beside it
            kind = "unexplained"
            reason = (
                f"replaces the trusted structure that read {', '.join(reads)} (not proven "
                "equivalent)"
            )
        elif reads and writes and not writes_inputs:
            second = [i for i in reads if any(c not in ids for c, _ in d.consumers.get(i, ()))]
            trig = sorted(ops & SELECTION_OPS)
            kind = "injected"
            reason = (
                f"reads graph input(s) {', '.join(reads)}"
                + (" beside the original stem" if second else "")
                + f" and merges into {', '.join(writes[:3])}"
                + (f"; contains comparison/selection ops {trig}" if trig else "")
            )
        else:
            kind, reason = "unexplained", "added structure with no known benign role"
        yield Region(
            side="deployed",
            nodes=tuple(_ref(n) for n in comp),
            kind=kind,
            reads_inputs=reads,
            taps=taps,
            writes_into=tuple(writes),
            merge_ops=tuple(dict.fromkeys(n.op for n in merge_nodes)),
            merge_nodes=tuple(n.name for n in merge_nodes),
            reason=reason,
        )
    del t_inputs_readers


def _replaces_readers(m: _Matcher, reads: tuple[str, ...]) -> bool:
    """Whether, for each of these graph inputs, some trusted node reading it is gone: the
    trusted computation from the input was rewritten, not left whole with a branch beside
    it (an injected branch leaves every original reader in place)."""
    for i in reads:
        readers = [c for c, _ in m.t.consumers.get(i, ())]
        if not readers or all(c in m.t2d for c in readers):
            return False
    return True


def _stands_for(m: _Matcher, o: str) -> list[str]:
    """Trusted tensors that deployed tensor ``o`` (an added region's output) replaces."""
    t, d = m.t, m.d
    out: list[str] = []
    if o in d.outputs:
        name = d.output_names[d.outputs.index(o)]
        if name in t.output_names:
            out.append(t.outputs[t.output_names.index(name)])
    for cid, slot in d.consumers.get(o, ()):
        ti = m.d2t.get(cid)
        if ti is not None and 0 <= slot < len(t.nodes[ti].inputs):
            out.append(t.nodes[ti].inputs[slot])
    return out


def _explain_removed(m: _Matcher, removed: list[Node]) -> Iterable[Region]:
    t, _d = m.t, m.d
    for comp in _components(t, removed):
        ext_in, ext_out = _boundary(t, comp)
        ops = {n.op for n in comp}
        reads = tuple(i for i in ext_in if i in t.inputs)
        data_in = [i for i in ext_in if i not in t.consts]
        shape_only = all(
            all(
                t.nodes[c].op in ("Shape", "Size")
                for c, _ in t.consumers.get(i, ())
                if c in {n.id for n in comp}
            )
            for i in data_in
        )
        folded = ops <= SHAPE_OPS and shape_only and all(_replaced_by_const(m, o) for o in ext_out)
        kind, reason = (
            (
                "folding",
                "computes only from constants and tensor shapes; deployed holds "
                "the result as a constant",
            )
            if folded
            else ("unexplained", "original structure missing from deployed")
        )
        yield Region(
            side="trusted",
            nodes=tuple(_ref(n) for n in comp),
            kind=kind,
            reads_inputs=reads,
            taps=tuple(data_in),
            writes_into=tuple(ext_out),
            merge_ops=(),
            merge_nodes=(),
            reason=reason,
        )


def _replaced_by_const(m: _Matcher, tt: str) -> bool:
    t, d = m.t, m.d
    users = t.consumers.get(tt, ())
    if not users:
        return tt not in t.outputs
    for cid, slot in users:
        di = m.t2d.get(cid)
        if di is None or slot < 0:
            return False
        if d.nodes[di].inputs[slot] not in d.consts:
            return False
    return True


def _folded_deployed_consts(m: _Matcher, r: Region) -> list[str]:
    keys: list[str] = []
    for tt in r.writes_into:
        for cid, slot in m.t.consumers.get(tt, ()):
            di = m.t2d.get(cid)
            if di is not None and slot >= 0:
                c = m.d.consts.get(m.d.nodes[di].inputs[slot])
                if c is not None:
                    keys.extend(c.sources)
    return keys


def _pair_fusions(m: _Matcher, regions: list[Region]) -> list[Region]:
    """An unexplained added region and a removed one with the same boundary: a fusion when
    the added side uses only fusible operators and adds no selection logic."""
    from dataclasses import replace

    out = list(regions)
    for i, a in enumerate(out):
        if a.side != "deployed" or a.kind != "unexplained":
            continue
        for j, r in enumerate(out):
            if r.side != "trusted" or r.kind not in ("unexplained",):
                continue
            same_out = set(a.writes_into) == set(r.writes_into) and a.writes_into
            same_in = set(a.taps) <= set(r.taps) | set(m.t.inputs)
            new_sel = {op for op in a.ops if op in SELECTION_OPS} - set(r.ops)
            if same_out and same_in and not new_sel and set(a.ops) <= FUSED_OPS | set(r.ops):
                reason = (
                    f"same boundary as removed {', '.join(r.ops)}; replaced by {', '.join(a.ops)}"
                )
                out[i] = replace(a, kind="fusion", reason=reason, replaces=r.nodes)
                out[j] = replace(r, kind="fusion", reason=reason)
                break
    return out
