"""Matching the nodes of two canonical graphs by what they compute: upstream-cone
hashes, then downstream hashes, then propagation from matched neighbours."""

from __future__ import annotations

from collections import defaultdict

from scanner.graph.canonical import (
    COMMUTATIVE,
    CanonicalGraph,
    Node,
    attr_signature,
)
from scanner.graph.diff_model import ChangedNode, _fingerprint, _ref


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
