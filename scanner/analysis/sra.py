"""Replaced subnetworks (Subnet Replacement Attack, Qi et al. CVPR 2022) and
handcrafted neuron paths (Hong et al. NeurIPS 2022): per-layer footprints linked into a
chain by channel index.

SRA grafts a narrow network into the victim. In each layer on the chain the row of the
chain's output channel is zeroed, the column of the previous chain channel is zeroed, and
the single block where they cross is planted: a "plus" in the changed-element map. The
first layer only replaces the chain's row; the classifier's chain column is zeroed except
the target logit. The evidence is the zero pattern and its connectivity, never the planted
magnitudes (which an attacker can rescale to look like the layer's own weights).

A handcrafted backdoor instead picks a few neurons, sets some of their inputs to repeated
magnitudes and scales their other inputs by one constant: per neuron, a changed row where
most changed entries share one new/old ratio, plus a few planted entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scanner.analysis.layers import Layer, LayerGraph
from scanner.analysis.tensors import FLOAT_DTYPES, TensorPair


@dataclass(frozen=True)
class Footprint:
    tensor: str
    kind: str
    """``plus``, ``head``, ``channel`` (depthwise), ``tail``, ``cut-row``, ``cut-col``,
    ``neuron`` (handcrafted) or ``planted`` (a few planted entries in a row)."""
    out_channels: tuple[int, ...] = ()
    in_channels: tuple[int, ...] = ()
    targets: tuple[int, ...] = ()
    evidence: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Chain:
    nodes: tuple[Footprint, ...]
    params: tuple[tuple[str, tuple[int, ...]], ...]
    """Per-channel tensors (bias, BatchNorm) changed at chain channels."""

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(n.tensor for n in self.nodes) + tuple(p for p, _ in self.params)

    @property
    def targets(self) -> tuple[int, ...]:
        return self.nodes[-1].targets

    def describe(self) -> list[dict[str, object]]:
        return [
            {
                "tensor": n.tensor,
                "kind": n.kind,
                "in_channels": list(n.in_channels),
                "out_channels": list(n.out_channels),
                **({"target_logits": list(n.targets)} if n.targets else {}),
            }
            for n in self.nodes
        ]


def oriented(pair: TensorPair, layer: Layer | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(trusted, deployed, changed) as ``(out, in, k)`` for the layer's axes."""
    a, b, c = pair.trusted, pair.deployed, pair.changed
    if layer is not None and layer.out_axis == 1 and layer.in_axis == 0:
        return a.transpose(1, 0, 2), b.transpose(1, 0, 2), c.transpose(1, 0, 2)
    return a, b, c


def sra_footprint(pair: TensorPair, layer: Layer | None) -> Footprint | None:
    """The SRA footprint of one changed weight tensor, or None."""
    if not pair.complete or len(pair.shape) < 2:
        return None
    a, b, c = oriented(pair, layer)
    out_n, in_n = a.shape[0], a.shape[1]
    chg = c.any(axis=2)
    dnz = (b != 0).any(axis=2)
    tnz = (a != 0).any(axis=2)
    rows = np.flatnonzero(chg.any(axis=1))
    few_rows = max(2, out_n // 8)
    if in_n == 1 or (layer is not None and layer.depthwise):
        if 0 < rows.size <= few_rows:
            return Footprint(pair.name, "channel", tuple(map(int, rows)), tuple(map(int, rows)))
        return None
    d_row, t_row = dnz.sum(axis=1), tnz.sum(axis=1)
    d_col, t_col = dnz.sum(axis=0), tnz.sum(axis=0)
    cols = np.flatnonzero(chg.any(axis=0))
    zrows = [
        int(r)
        for r in rows
        if d_row[r] <= max(2, in_n // 10) and t_row[r] >= d_row[r] + max(1, in_n // 4)
    ]
    zcols = [
        int(j)
        for j in cols
        if d_col[j] <= max(2, out_n // 10) and t_col[j] >= d_col[j] + max(1, out_n // 4)
    ]
    planted = [(r, j) for r in zrows for j in zcols if dnz[r, j] and chg[r, j]]
    if planted:
        ev = {"planted": [list(p) for p in planted[:16]], "zeroed_rows": zrows[:16],
              "zeroed_cols": zcols[:16]}  # fmt: skip
        return Footprint(
            pair.name,
            "plus",
            tuple(sorted({p[0] for p in planted})),
            tuple(sorted({p[1] for p in planted})),
            evidence=ev,
        )
    if zcols and len(zcols) <= max(2, in_n // 8):
        targets = sorted({int(r) for j in zcols for r in np.flatnonzero(dnz[:, j] & chg[:, j])})
        return Footprint(
            pair.name, "tail" if targets else "cut-col", (), tuple(zcols), tuple(targets)
        )
    if zrows and len(zrows) <= few_rows and rows.size == len(zrows):
        return Footprint(pair.name, "cut-row", tuple(zrows))
    if 0 < rows.size <= few_rows and np.all(chg[rows].mean(axis=1) >= 0.5):
        return Footprint(pair.name, "head", tuple(map(int, rows)))
    return None


def _ratio_tol(dtype: str) -> float:
    mant = FLOAT_DTYPES.get(dtype, (23, 8))[0]
    return 8.0 * 2.0**-mant


def neuron_footprint(pair: TensorPair, layer: Layer | None) -> Footprint | None:
    """Handcrafted-neuron footprint: few changed rows, each with most changed inputs
    scaled by one constant and a few planted entries."""
    if not pair.complete or len(pair.shape) < 2:
        return None
    a, b, c = oriented(pair, layer)
    out_n, k = a.shape[0], a.shape[2]
    a2, b2, c2 = a.reshape(out_n, -1), b.reshape(out_n, -1), c.reshape(out_n, -1)
    rows = np.flatnonzero(c2.any(axis=1))
    if rows.size == 0 or rows.size > max(4, out_n // 20):
        return None
    tol = _ratio_tol(pair.dtype)
    neurons: list[int] = []
    planted_cols: set[int] = set()
    scales: list[float] = []
    planted_vals: list[float] = []
    only_planted: list[int] = []
    for r in rows:
        idx = np.flatnonzero(c2[r])
        nz = idx[a2[r, idx] != 0]
        scaled = np.zeros(0, dtype=np.int64)
        if nz.size >= 3:
            ratio = b2[r, nz].astype(np.float64) / a2[r, nz]
            mode = float(np.median(ratio))
            near = np.abs(ratio - mode) <= tol * max(abs(mode), 1e-30)
            if near.sum() >= max(3, 0.5 * idx.size) and abs(mode - 1.0) > tol:
                scaled = nz[near]
                scales.append(mode)
        rest = np.setdiff1d(idx, scaled)
        if scaled.size and 0 < rest.size <= max(4, idx.size // 4):
            neurons.append(int(r))
        elif not scaled.size and 0 < idx.size <= 4:
            only_planted.append(int(r))
        else:
            if not scaled.size:
                return None
            continue
        planted_cols.update(int(j) // k for j in rest)
        planted_vals.extend(float(abs(v)) for v in b2[r, rest])
    if not neurons and not only_planted:
        return None
    max_w = float(np.max(np.abs(a2))) or 1.0
    values, counts = np.unique(np.asarray(planted_vals, dtype=np.float32), return_counts=True)
    repeated = [float(v) for v, n in zip(values, counts, strict=True) if n >= 2]
    ev: dict[str, object] = {
        "neurons": neurons[:16],
        "planted_inputs": sorted(planted_cols)[:16],
        "scale_factors": [float(f"{s:.6g}") for s in scales[:8]],
        "planted_over_layer_max": [float(f"{v / max_w:.4g}") for v in planted_vals[:8]],
        "repeated_magnitudes": [float(f"{v:.6g}") for v in repeated[:8]],
    }
    kind = "neuron" if neurons else "planted"
    return Footprint(
        pair.name, kind, tuple(neurons or only_planted), tuple(sorted(planted_cols)), evidence=ev
    )


def _maps(a: Layer | None, b: Layer | None, channel: int) -> range:
    """Input channels of ``b`` that carry output channel ``channel`` of ``a``."""
    if a is None or b is None or b.depthwise or b.in_dim == a.out_dim:
        return range(channel, channel + 1)
    if b.in_dim > a.out_dim and b.in_dim % a.out_dim == 0:
        per = b.in_dim // a.out_dim
        return range(channel * per, (channel + 1) * per)
    return range(channel, channel + 1)


OUT_KINDS = {"plus", "head", "channel", "cut-row", "neuron", "planted"}
IN_KINDS = {"plus", "tail", "channel", "cut-col", "neuron", "planted"}


def link(
    footprints: dict[str, Footprint], graph: LayerGraph, strong: set[str]
) -> list[tuple[Footprint, ...]]:
    """Maximal paths of footprints linked output channel -> input channel.

    ``strong`` are the kinds a path must contain at least one of to count.
    """
    names = sorted(
        footprints, key=lambda n: graph.layers[n].order if n in graph.layers else 1 << 30
    )
    edges: dict[str, list[str]] = {n: [] for n in names}
    for a_name in names:
        fa = footprints[a_name]
        if fa.kind not in OUT_KINDS:
            continue
        la = graph.layers.get(a_name)
        succ = set(graph.successors(a_name))
        for b_name in names:
            fb = footprints[b_name]
            if b_name == a_name or fb.kind not in IN_KINDS or b_name not in succ:
                continue
            lb = graph.layers.get(b_name)
            if any(j in fb.in_channels for c in fa.out_channels for j in _maps(la, lb, c)):
                edges[a_name].append(b_name)
    incoming = {n for targets in edges.values() for n in targets}
    paths: list[tuple[Footprint, ...]] = []

    def walk(node: str, path: list[str]) -> None:
        nxt = [m for m in edges[node] if m not in path]
        if not nxt:
            if len(path) >= 2 and any(footprints[p].kind in strong for p in path):
                paths.append(tuple(footprints[p] for p in path))
            return
        for m in nxt:
            walk(m, [*path, m])

    for start in names:
        if start not in incoming and edges[start]:
            walk(start, [start])
    # Keep maximal paths only (drop those contained in a longer one).
    paths.sort(key=len, reverse=True)
    kept: list[tuple[Footprint, ...]] = []
    for p in paths:
        ids = [f.tensor for f in p]
        if not any(set(ids) <= {f.tensor for f in q} for q in kept):
            kept.append(p)
    return kept


def chain_params(
    path: tuple[Footprint, ...], graph: LayerGraph, changed_1d: dict[str, tuple[int, ...]]
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Changed per-channel tensors of the chain's layers, changed only at chain channels."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for fp in path:
        layer = graph.layers.get(fp.tensor)
        channels = set(fp.out_channels) | (set(fp.targets) if fp.kind == "tail" else set())
        params = layer.params if layer is not None else ()
        for p in params:
            idx = changed_1d.get(p)
            if idx and set(idx) <= channels:
                out.append((p, idx))
    return tuple(out)
