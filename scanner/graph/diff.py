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

from dataclasses import replace
from typing import Any

import numpy as np

from scanner.graph.canonical import (
    SMALL_CONST,
    CanonicalGraph,
    Node,
    compute_hashes,
)
from scanner.graph.diff_model import (  # noqa: F401  (the diff's public types)
    WEIGHT_RTOL,
    ChangedNode,
    GraphDiff,
    NodeRef,
    Region,
    WeightCheck,
    _ref,
    is_parameter,
)
from scanner.graph.matching import _Matcher
from scanner.graph.regions import _explain_added, _explain_removed, _pair_fusions


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
