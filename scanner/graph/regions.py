"""Grouping unmatched nodes into connected regions and explaining each (injected
branch, pre/post-processing, fusion, constant folding) or leaving it unexplained."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace

from scanner.graph.canonical import (
    CanonicalGraph,
    Node,
)
from scanner.graph.diff_model import FUSED_OPS, SELECTION_OPS, SHAPE_OPS, Region, _ref
from scanner.graph.matching import _Matcher


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
