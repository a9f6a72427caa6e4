"""Render an added region as a small tree: merge point at the top, inputs at the leaves."""

from __future__ import annotations

from scanner.graph.canonical import CanonicalGraph, Node
from scanner.graph.diff import Region

MAX_LINES = 40


def render_region(g: CanonicalGraph, region: Region, max_depth: int = 8) -> str:
    """``region`` as indented lines: each merge node, then what feeds it, down to graph
    inputs, original tensors and constants."""
    names = {(n.name, n.scope) for n in region.nodes}
    nodes = [n for n in g.nodes.values() if (n.name, n.scope) in names]
    by_out = {o: n for n in nodes for o in n.outputs if o}
    lines: list[str] = []
    seen: set[int] = set()

    def leaf(t: str) -> str:
        if t in g.inputs:
            return f"graph input {t!r}"
        c = g.consts.get(t)
        if c is not None:
            if c.numel <= 8 and c.value() is not None:
                return f"const {c.value().ravel().tolist()}"
            return f"const {list(c.shape)}"
        return f"original tensor {_short(t)!r}"

    def walk(n: Node, depth: int) -> None:
        if len(lines) >= MAX_LINES:
            return
        pad = "  " * depth
        if n.id in seen:
            lines.append(f"{pad}{n.op} {n.name!r} (see above)")
            return
        seen.add(n.id)
        lines.append(f"{pad}{n.op} {n.name!r}")
        if depth >= max_depth:
            return
        for i in n.inputs:
            if not i:
                continue
            src = by_out.get(i)
            if src is not None:
                walk(src, depth + 1)
            else:
                lines.append(f"{'  ' * (depth + 1)}<- {leaf(i)}")

    merges = [n for n in nodes if n.name in region.merge_nodes] or nodes[-1:]
    for m in merges:
        target = ", ".join(_short(w) for w in region.writes_into[:3]) or "graph output"
        lines.append(f"-> into {target} via {m.op}")
        walk(m, 1)
    if len(lines) >= MAX_LINES:
        lines.append("  ...")
    return "\n".join(lines)


def _short(t: str) -> str:
    return t.rpartition("::")[2] if "::" in t else t
