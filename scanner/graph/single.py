"""Backdoor footprints in one ONNX graph (no trusted reference).

Three footprints, each checked on the canonical graph (constants folded, aliases gone),
subgraphs and model-local functions included:

- *trigger comparison*: a graph input's values (directly, or after data-movement ops
  such as Slice / Gather / Reshape / reductions) compared with a constant, and the result
  steering a Where / Mul / Add close to an output;
- *side branch*: a second consumer of a raw graph input beside the stem, often a
  constant-window Slice, feeding a small branch that merges close to an output;
- *parameter-free path*: a path from a graph input to a merge close to an output that
  passes no weight at all (AvgPool / Exp style architectural backdoors).

Benign twins stay quiet by construction: pad and causal masks merge far from the
outputs (in attention) or derive from shapes; scalar control inputs (sample rate) pick
branches through If; pre/post-processing wrappers sit on the only path from the input
or after the outputs, and carry no comparison of input values.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from scanner.graph.canonical import SMALL_CONST, CanonicalGraph, Node

COMPARE_OPS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
STEER_OPS = {"Where", "Mul", "Add", "Max", "Sub", "Sum"}
MERGE_OPS = {"Add", "Mul", "Where", "Max", "Min", "Sum", "Concat", "Sub"}
DATA_MOVEMENT = {
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Cast",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceSum",
    "Abs",
    "Identity",
    "Split",
    "Sub",
    "Div",
    "Mul",
    "Add",
    "Neg",
}
SHAPE_SOURCES = {"Shape", "Size"}
NEAR_OUTPUT_HOPS = 4
"""Merges this many nodes or fewer away from a graph output count as "near an output"."""
SMALL_BRANCH = 0.1
"""A side branch holds at most this fraction of the graph's nodes."""


@dataclass(frozen=True)
class GraphFootprint:
    kind: str
    """trigger-comparison, side-branch or parameter-free-path."""
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    merge_node: str
    detail: str


def _hops_to_output(g: CanonicalGraph) -> dict[int, int]:
    """Nodes' distance (in nodes) to the nearest graph output, main graph only."""
    dist: dict[int, int] = {}
    queue: deque[tuple[int, int]] = deque()
    for o in g.outputs:
        p = g.producer.get(o)
        if p is not None:
            queue.append((p, 0))
    while queue:
        nid, d = queue.popleft()
        if nid in dist:
            continue
        dist[nid] = d
        for i in g.nodes[nid].inputs:
            p = g.producer.get(i)
            if p is not None and p not in dist:
                queue.append((p, d + 1))
    return dist


def _has_weight(g: CanonicalGraph, n: Node) -> bool:
    return any(i in g.consts and g.consts[i].numel > SMALL_CONST for i in n.inputs)


def _weighted(g: CanonicalGraph) -> set[str]:
    """Tensors computed (anywhere upstream) from a weight."""
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        for n in g.nodes.values():
            if any(o in out for o in n.outputs if o):
                continue
            if _has_weight(g, n) or any(i in out for i in (*n.inputs, *n.free)):
                out.update(o for o in n.outputs if o)
                changed = True
    return out


def _forward(
    g: CanonicalGraph,
    start: list[str],
    through: set[str] | None,
    avoid_weights: bool = False,
    gated: set[str] | None = None,
) -> dict[int, list[int]]:
    """Nodes reachable from tensors ``start`` (optionally only through ops in ``through``),
    each with the path of node ids that reached it. ``avoid_weights``: not through nodes
    reading a weight, nor through a product with a ``gated`` tensor (a value computed from
    weights, such as a recurrent cell's forget gate: the path then depends on them)."""
    seen: dict[int, list[int]] = {}
    queue: deque[tuple[str, list[int]]] = deque((t, []) for t in start)
    while queue:
        t, path = queue.popleft()
        for cid, slot in g.consumers.get(t, ()):
            if cid in seen or slot < 0:
                continue
            n = g.nodes[cid]
            if n.op in SHAPE_SOURCES:
                continue
            if avoid_weights and _has_weight(g, n):
                continue
            if (
                avoid_weights
                and gated
                and n.op in ("Mul", "Div")
                and any(i != t and i in gated for i in n.inputs)
            ):
                continue
            seen[cid] = [*path, cid]
            if through is None or n.op in through:
                for o in n.outputs:
                    queue.append((o, seen[cid]))
    return seen


MASK_PLUMBING = {
    "Cast",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Expand",
    "Transpose",
    "Not",
    "And",
    "Or",
    "ReduceMax",
    "ReduceMin",
    "ReduceSum",
    "Flatten",
}
"""Ops a comparison result passes through on its way to what it selects or scales."""
SELECT_OPS = {"Where", "Mul"}
PAYLOAD_MERGES = {"Add", "Sub", "Sum", "Where", "Max", "Min"}


def _is_payload(g: CanonicalGraph, t: str) -> bool:
    """A constant that carries information: several values, not all equal. Masks select
    uniform fills (0, -inf, the dtype's minimum); a payload writes a direction."""
    c = g.consts.get(t)
    if c is None or c.numel < 2:
        return False
    v = c.value()
    return v is not None and v.dtype.kind == "f" and bool(np.ptp(v) > 0)


def _payload(g: CanonicalGraph, cmp: Node) -> tuple[int, int, list[int]] | None:
    """A comparison whose result selects (Where) or scales (Mul) a non-uniform constant
    that is then merged into an activation tensor, at any depth: ShadowLogic on a
    sequence model adds a direction to the residual stream wherever the trigger token
    sits. Returns (selecting node, merge node, path) or None."""
    reach: dict[str, list[int]] = {o: [] for o in cmp.outputs if o}
    queue = deque(reach)
    derived: set[str] = set(reach)
    while queue:
        t = queue.popleft()
        for cid, slot in g.consumers.get(t, ()):
            n = g.nodes[cid]
            if slot < 0 or not n.outputs or not n.outputs[0]:
                continue
            path = [*reach[t], cid]
            if n.op in SELECT_OPS and any(_is_payload(g, i) for i in n.inputs if i != t):
                merge = _merge_into_activation(g, n.outputs[0], derived)
                if merge is not None:
                    return cid, merge[0], [*path, *merge[1]]
            if n.op in MASK_PLUMBING and n.outputs[0] not in reach:
                reach[n.outputs[0]] = path
                derived.add(n.outputs[0])
                queue.append(n.outputs[0])
    return None


def _merge_into_activation(
    g: CanonicalGraph, t: str, derived: set[str]
) -> tuple[int, list[int]] | None:
    """The first merge of ``t`` (through shape-only ops) with a tensor that is neither a
    constant nor derived from the comparison itself."""
    frontier: deque[tuple[str, list[int]]] = deque([(t, [])])
    seen = {t}
    while frontier:
        x, path = frontier.popleft()
        for cid, slot in g.consumers.get(x, ()):
            n = g.nodes[cid]
            if slot < 0:
                continue
            if n.op in PAYLOAD_MERGES:
                others = [
                    i for i in n.inputs if i and i != x and i not in g.consts and i not in derived
                ]
                if others:
                    return cid, [*path, cid]
            if n.op in MASK_PLUMBING | {"Mul"} and n.outputs and n.outputs[0] not in seen:
                seen.add(n.outputs[0])
                frontier.append((n.outputs[0], [*path, cid]))
    return None


def find_footprints(g: CanonicalGraph) -> list[GraphFootprint]:
    hops = _hops_to_output(g)
    data_inputs = [
        i
        for i in g.inputs
        if g.input_types.get(i, (0, ()))[1] != ()  # scalars are controls
    ]
    out: list[GraphFootprint] = []
    flagged: set[int] = set()
    # 1. trigger comparison: input values -> compare with constant -> steer near output
    for inp in data_inputs:
        thin = _forward(g, [inp], DATA_MOVEMENT | COMPARE_OPS)
        for nid in thin:
            n = g.nodes[nid]
            if n.op not in COMPARE_OPS or not any(i in g.consts for i in n.inputs):
                continue
            # steering means gating the result directly: a path through learned weights
            # (a pad mask entering attention, then the output projection) is computation
            steer = _forward(g, n.outputs, None, avoid_weights=True)
            near = [
                s
                for s in steer
                if g.nodes[s].op in STEER_OPS and hops.get(s, 99) <= NEAR_OUTPUT_HOPS
            ]
            if near and not any(g.nodes[s].op == "If" for s in steer if s not in near):
                m = min(near, key=lambda s: len(steer[s]))
                path = [*thin[nid], *steer[m]]
                flagged.update(path)
                out.append(
                    GraphFootprint(
                        "trigger-comparison",
                        tuple(g.nodes[p].name for p in path),
                        (inp,),
                        g.nodes[m].name,
                        f"{inp!r} compared with a constant by {n.op} {n.name!r}, steering "
                        f"{g.nodes[m].op} {g.nodes[m].name!r} {hops[m]} node(s) before an output",
                    )
                )
                break
            payload = _payload(g, n)
            if payload is not None:
                sel, merge, path = payload
                path = [*thin[nid], *path]
                flagged.update(path)
                c = next(g.consts[i] for i in g.nodes[sel].inputs if _is_payload(g, i))
                out.append(
                    GraphFootprint(
                        "trigger-comparison",
                        tuple(g.nodes[p].name for p in path),
                        (inp,),
                        g.nodes[merge].name,
                        f"{inp!r} compared with a constant by {n.op} {n.name!r} selects a "
                        f"constant payload of {c.numel} values ({g.nodes[sel].op} "
                        f"{g.nodes[sel].name!r}) merged into the activations by "
                        f"{g.nodes[merge].op} {g.nodes[merge].name!r}",
                    )
                )
                break
    # 2. side branch: a second consumer of the raw input that merges near an output
    total = max(1, len(g.nodes))
    for inp in data_inputs:
        consumers = [
            c for c, s in g.consumers.get(inp, ()) if s >= 0 and g.nodes[c].op not in SHAPE_SOURCES
        ]
        if len(consumers) < 2:
            continue
        reach = {c: _forward(g, g.nodes[c].outputs, None) | {c: [c]} for c in consumers}
        stem = max(consumers, key=lambda c: len(reach[c]))
        for c in consumers:
            if c == stem or c in flagged:
                continue
            own = {n for n in reach[c] if n not in reach[stem]}
            # where the branch joins the stem: a merge fed by the branch's own nodes (once
            # joined, everything downstream is the stem's, and would "merge" anywhere)
            merges = [
                n
                for n in reach[c]
                if n in reach[stem]
                and g.nodes[n].op in MERGE_OPS
                and hops.get(n, 99) <= NEAR_OUTPUT_HOPS
                and any(g.producer.get(i) in own for i in g.nodes[n].inputs)
            ]
            if merges and len(own) <= SMALL_BRANCH * total:
                m = min(merges, key=lambda n: len(reach[c][n]))
                flagged.update(own)
                window = g.nodes[c].op == "Slice" and all(
                    i in g.consts for i in g.nodes[c].inputs[1:] if i
                )
                out.append(
                    GraphFootprint(
                        "side-branch",
                        tuple(g.nodes[p].name for p in sorted(own)),
                        (inp,),
                        g.nodes[m].name,
                        f"{inp!r} read a second time by {g.nodes[c].op} {g.nodes[c].name!r}"
                        + (" (a constant window)" if window else "")
                        + f", a {len(own)}-node branch beside the stem merging into "
                        f"{g.nodes[m].op} {g.nodes[m].name!r} near an output",
                    )
                )
    # 3. parameter-free path from an input to a merge near an output
    gated = _weighted(g)
    for inp in data_inputs:
        free = _forward(g, [inp], None, avoid_weights=True, gated=gated)
        for nid, path in free.items():
            n = g.nodes[nid]
            if nid in flagged or n.op not in MERGE_OPS or hops.get(nid, 99) > NEAR_OUTPUT_HOPS:
                continue
            others = [
                i
                for i in n.inputs
                if i and i not in g.consts and g.producer.get(i) not in free and i != inp
            ]
            if not others or len(path) < 2:
                continue
            flagged.update(path)
            out.append(
                GraphFootprint(
                    "parameter-free-path",
                    tuple(g.nodes[p].name for p in path),
                    (inp,),
                    n.name,
                    f"{inp!r} reaches {n.op} {n.name!r} near an output through "
                    f"{' -> '.join(g.nodes[p].op for p in path)} with no weight on the way",
                )
            )
            break
    return out
