"""Equivalence under a condition: one branch of an input-driven ``If``.

A graph that selects between models on an input (silero-vad's ``sr == 16000`` picks the
16 kHz or the 8 kHz network) and a graph that holds only one of them are not equivalent.
They may still agree whenever the condition holds. For each ``If`` of one graph whose
condition reads a graph input the other graph does not read, the branch is fixed (the
condition replaced by ``true`` or ``false``), the canonical form recomputed, and the
graphs compared again. A clean comparison is reported as equivalence *under that
condition*, which is a statement about a restricted domain, never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from scanner.graph.canonical import Body, CanonicalGraph, compute_hashes, const_from_array

MAX_IFS = 4
"""Input-driven Ifs tried per graph (each costs one canonicalization and one diff)."""


@dataclass(frozen=True)
class Specialization:
    side: str
    """The graph whose branch was fixed (``trusted`` or ``deployed``)."""
    node: str
    branch: bool
    condition: str
    """The condition as text (``sr == 16000``)."""


def _copy(g: CanonicalGraph) -> CanonicalGraph:
    nodes = {
        k: replace(n, inputs=list(n.inputs), outputs=list(n.outputs), attrs=dict(n.attrs))
        for k, n in g.nodes.items()
    }
    bodies = {k: Body(b.parent, list(b.inputs), list(b.outputs)) for k, b in g.bodies.items()}
    return replace(
        g,
        nodes=nodes,
        consts=dict(g.consts),
        inputs=list(g.inputs),
        outputs=list(g.outputs),
        output_names=list(g.output_names),
        bodies=bodies,
        absorbed=set(g.absorbed),
        unused=set(g.unused),
        qrange=dict(g.qrange),
        notes=list(g.notes),
        uhash={},
        nhash={},
        dhash={},
        producer={},
        consumers={},
    )


def _reads(g: CanonicalGraph, tensor: str, depth: int = 0) -> set[str]:
    """Graph inputs ``tensor`` is computed from."""
    if tensor in g.inputs:
        return {tensor}
    pid = g.producer.get(tensor)
    if pid is None or depth > 64:
        return set()
    out: set[str] = set()
    for i in g.nodes[pid].inputs:
        if i:
            out |= _reads(g, i, depth + 1)
    return out


def describe_condition(g: CanonicalGraph, tensor: str) -> str:
    pid = g.producer.get(tensor)
    n = g.nodes.get(pid) if pid is not None else None
    symbols = {
        "Equal": "==",
        "Less": "<",
        "Greater": ">",
        "LessOrEqual": "<=",
        "GreaterOrEqual": ">=",
    }
    if n is not None and n.op in symbols and len(n.inputs) == 2:
        sides = []
        for i in n.inputs:
            c = g.consts.get(i)
            v = c.value() if c is not None else None
            if v is not None and np.size(v) == 1:
                sides.append(str(np.ravel(v)[0].item()))
            else:
                reads = sorted(_reads(g, i))
                sides.append(reads[0] if len(reads) == 1 else i.rpartition("::")[2])
        return f"{sides[0]} {symbols[n.op]} {sides[1]}"
    reads = sorted(_reads(g, tensor))
    return f"the condition on {', '.join(reads)}" if reads else "a computed condition"


def input_driven_ifs(g: CanonicalGraph, other_reads: set[str]) -> list[str]:
    """Main-graph Ifs whose condition reads a graph input that ``other_reads`` lacks."""
    out = []
    for n in g.nodes.values():
        if n.op == "If" and not n.scope and n.inputs and n.inputs[0] not in g.consts:
            reads = _reads(g, n.inputs[0])
            if reads and not reads <= other_reads:
                out.append(n.name)
    return out[:MAX_IFS]


def specialized(g: CanonicalGraph, node_name: str, branch: bool) -> CanonicalGraph | None:
    """``g`` with the condition of If ``node_name`` fixed to ``branch``, canonical again."""
    from scanner.graph.rewrites import normalize

    h = _copy(g)
    n = next((m for m in h.nodes.values() if m.name == node_name and m.op == "If"), None)
    if n is None:
        return None
    tid = f"~specialized:{n.id}"
    h.consts[tid] = const_from_array(np.asarray(branch), (), "specialized")
    n.inputs = [tid, *n.inputs[1:]]
    notes = list(h.notes)
    normalize(h)
    h.notes = [*notes, f"{node_name} fixed to its {'then' if branch else 'else'} branch"]
    compute_hashes(h)
    return h
