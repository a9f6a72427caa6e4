"""Classify every changed tensor of a pair, then the pair.

Order matters: bit-level footprints first (they are exact), then exact-zero patterns
(pruning and its look-alikes), then the connectivity detectors (replaced subnetwork,
handcrafted path), then rank structure and the prune-candidate test for what is left.
Pair-level context settles the rest: one rank-1 tensor is a knowledge edit, the same
direction in many tensors is abliteration, low rank in many tensors is an adapter merge,
full-rank smooth change is fine-tuning.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scanner.analysis.bits import analyze_bits
from scanner.analysis.layers import LayerGraph, infer_layers
from scanner.analysis.lowrank import RankProfile, rank_profile
from scanner.analysis.pruning import analyze_prune_activated, analyze_zeros
from scanner.analysis.sra import (
    Footprint,
    chain_params,
    link,
    neuron_footprint,
    sra_footprint,
)
from scanner.analysis.tensors import TensorPair, load_pair
from scanner.artifact import Artifact
from scanner.diff.model import TensorDiff, TensorStatus, class_rank

SHARED_COS = 0.9
"""|cosine| above which two tensors' dominant delta directions count as the same."""
SHARED_MIN = 3
"""Tensors sharing one direction before it counts as abliteration-like."""
SPARSE_ROWS = 0.02
"""A change confined to at most this share of rows (or columns) is "a few sparse rows"."""
BLOCK_AREA = 0.10
"""A change whose changed rows x changed columns cover at most this share of the tensor
is confined to a block (an update by training spreads over all rows and columns)."""


@dataclass(frozen=True)
class Verdict:
    """The class of one changed tensor and the figures behind it."""

    name: str
    cls: str
    kind: str
    evidence: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One detection spanning one or more tensors (a chain, a shared direction ...)."""

    cls: str
    kind: str
    tensors: tuple[str, ...]
    message: str
    evidence: dict[str, object] = field(default_factory=dict)
    channels: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Tensor -> output channels / rows involved (for locations)."""


@dataclass(frozen=True)
class WeightAnalysis:
    verdicts: dict[str, Verdict]
    events: tuple[Event, ...]
    classification: str | None
    evidence: dict[str, object]
    seconds: float


def _changed_1d(pairs: dict[str, TensorPair]) -> dict[str, tuple[int, ...]]:
    return {
        n: tuple(int(i) for i in np.flatnonzero(p.changed.reshape(-1)))
        for n, p in pairs.items()
        if len(p.shape) <= 1
    }


def analyze_pair(
    trusted: Artifact, deployed: Artifact, tensors: Sequence[TensorDiff], skip: set[str]
) -> WeightAnalysis:
    started = time.perf_counter()
    pairs: dict[str, TensorPair] = {}
    for t in tensors:
        if t.status is TensorStatus.CHANGED and t.name not in skip:
            p = load_pair(trusted, deployed, t)
            if p is not None:
                pairs[t.name] = p
    verdicts: dict[str, Verdict] = {}
    events: list[Event] = []
    if not pairs:
        return WeightAnalysis({}, (), None, {}, time.perf_counter() - started)

    # 1. Bit-level footprints.
    flips: list[tuple[str, dict[str, object]]] = []
    for name, p in pairs.items():
        bit = analyze_bits(p)
        if bit is None:
            continue
        verdicts[name] = Verdict(name, "bit-level tampering", bit.kind, bit.evidence)
        if bit.kind == "low-byte payload":
            events.append(
                Event(
                    "bit-level tampering",
                    bit.kind,
                    (name,),
                    f"{name}: {bit.n_words:,} words changed only in their low "
                    f"{bit.payload_bits} bits (no sign or exponent change): a hidden payload "
                    f"of about {bit.n_words * bit.payload_bits // 8:,} bytes",
                    bit.evidence,
                    {name: bit.rows},
                )
            )
        else:
            flips.append((name, {**bit.evidence, "indices": list(bit.indices)}))
    if flips:
        words = sum(int(e["words"]) for _, e in flips)  # type: ignore[call-overload]
        events.append(
            Event(
                "bit-level tampering",
                "exponent/sign bit flips",
                tuple(n for n, _ in flips),
                f"{words} word(s) with flipped sign/exponent bits in "
                + ", ".join(n for n, _ in flips),
                {"tensors": dict(flips)},
            )
        )

    rest = {n: p for n, p in pairs.items() if n not in verdicts}
    # 2. Exact zeros.
    suspicious_zeros: dict[str, dict[str, object]] = {}
    for name, p in rest.items():
        z = analyze_zeros(p)
        if z is None:
            continue
        if z.benign:
            cls = "full fine-tune" if z.kind == "drop-and-rescale" else "pruning"
            verdicts[name] = Verdict(name, cls, z.kind, z.evidence)
        else:
            suspicious_zeros[name] = z.evidence

    # 3. Connectivity: replaced subnetworks and handcrafted paths.
    rest = {n: p for n, p in pairs.items() if n not in verdicts}
    graph: LayerGraph | None = None
    multi = {n: p for n, p in rest.items() if len(p.shape) >= 2}
    if multi:
        graph = infer_layers(deployed)
        one_d = _changed_1d({n: p for n, p in rest.items() if len(p.shape) <= 1})
        sra_fps: dict[str, Footprint] = {}
        for n, p in multi.items():
            fp = sra_footprint(p, graph.layers.get(n))
            if fp is not None:
                sra_fps[n] = fp
        for path in link(sra_fps, graph, {"plus", "tail"}):
            chain_events(path, graph, one_d, verdicts, events, "replaced subnetwork")
        neuron_fps: dict[str, Footprint] = {}
        for n, p in multi.items():
            if n in verdicts:
                continue
            fp = neuron_footprint(p, graph.layers.get(n))
            if fp is not None:
                neuron_fps[n] = fp
        for path in link(neuron_fps, graph, {"neuron"}):
            chain_events(path, graph, one_d, verdicts, events, "handcrafted path")
        # A lone plus (or cut) that links to nothing is still surgery on the zero pattern.
        for n, fp in sra_fps.items():
            if n not in verdicts and fp.kind == "plus":
                verdicts[n] = Verdict(n, "localized edit", "unlinked plus", fp.evidence)
                events.append(
                    Event(
                        "localized edit",
                        "zeroed row and column with a planted block",
                        (n,),
                        f"{n}: output channel(s) {list(fp.out_channels)} and input channel(s) "
                        f"{list(fp.in_channels)} zeroed except the block where they cross",
                        fp.evidence,
                        {n: fp.out_channels},
                    )
                )

    # 4. Rank structure and prune candidates for what is left.
    rest = {n: p for n, p in pairs.items() if n not in verdicts}
    profiles: dict[str, RankProfile] = {}
    for name, p in rest.items():
        if len(p.shape) < 2:
            continue
        pa = analyze_prune_activated(p)
        if pa is not None:
            verdicts[name] = Verdict(name, "prune-activated edit", pa.kind, pa.evidence)
            events.append(
                Event(
                    "prune-activated edit",
                    "change concentrated on prune candidates",
                    (name,),
                    f"{name}: {pa.evidence['energy_share_on_candidates']:.0%} of the change "
                    f"sits on the {pa.evidence['prune_ratio']:.0%} smallest weights and opposes "
                    f"the change on kept weights (opposition {pa.evidence['opposition']:.2f}): "
                    "pruning would remove the part that hides the edit",
                    pa.evidence,
                )
            )
            continue
        a2 = p.trusted.reshape(p.trusted.shape[0], -1)
        b2 = p.deployed.reshape(a2.shape)
        # The delta is zero outside the changed rows and columns: its rank structure is
        # that of the changed submatrix, which keeps the cost proportional to the change.
        ch = p.changed.reshape(a2.shape)
        rows, cols = np.flatnonzero(ch.any(axis=1)), np.flatnonzero(ch.any(axis=0))
        if rows.size * cols.size < 0.5 * a2.size:
            a2, b2 = a2[np.ix_(rows, cols)], b2[np.ix_(rows, cols)]
        profiles[name] = rank_profile(a2, b2, p.dtype)
    _rank_verdicts(pairs, profiles, verdicts, events, suspicious_zeros)

    # 5. 1-D and leftover tensors follow the pair's dominant benign class.
    benign = Counter(
        v.cls
        for v in verdicts.values()
        if v.cls in ("full fine-tune", "low-rank update", "indeterminate update", "pruning")
    )
    for name, p in pairs.items():
        if name in verdicts:
            continue
        frac = float(np.mean(p.changed))
        if name in suspicious_zeros:
            verdicts[name] = Verdict(name, "localized edit", "zeros on non-candidates",
                                     suspicious_zeros[name])  # fmt: skip
            events.append(
                Event(
                    "localized edit",
                    "zeros written on weights pruning would keep",
                    (name,),
                    f"{name}: {suspicious_zeros[name]['new_zeros']} weights set to exactly zero, "
                    f"only {suspicious_zeros[name]['candidate_share']:.0%} of them prune "
                    "candidates",
                    suspicious_zeros[name],
                )
            )
        elif frac >= 0.5 or benign:
            cls = benign.most_common(1)[0][0] if benign else "full fine-tune"
            if frac < 0.5 and cls == "pruning":
                cls = "full fine-tune"
            verdicts[name] = Verdict(name, cls, "dense change" if frac >= 0.5 else "follows pair",
                                     {"fraction_changed": round(frac, 4)})  # fmt: skip
        else:
            idx = np.flatnonzero(p.changed.reshape(-1))
            verdicts[name] = Verdict(name, "localized edit", "few elements",
                                     {"elements": [int(i) for i in idx[:16]]})  # fmt: skip
            events.append(
                Event(
                    "localized edit",
                    "few elements changed",
                    (name,),
                    f"{name}: {idx.size} of {p.changed.size} elements changed at "
                    f"{[int(i) for i in idx[:8]]}",
                    {"elements": [int(i) for i in idx[:64]]},
                )
            )
    classes = [v.cls for v in verdicts.values()]
    classification = max(classes, key=class_rank) if classes else None
    evidence: dict[str, object] = {
        "class": classification,
        "tensor_classes": dict(Counter(classes)),
        "layer_source": graph.source if graph is not None else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return WeightAnalysis(
        verdicts, tuple(events), classification, evidence, time.perf_counter() - started
    )


def chain_events(
    path: tuple[Footprint, ...],
    graph: LayerGraph,
    one_d: dict[str, tuple[int, ...]],
    verdicts: dict[str, Verdict],
    events: list[Event],
    cls: str,
) -> None:
    params = chain_params(path, graph, one_d)
    steps = [
        f"{fp.tensor}[{','.join(map(str, fp.in_channels)) or '*'}->"
        f"{','.join(map(str, fp.out_channels or fp.targets))}]"
        for fp in path
    ]
    target = list(path[-1].targets)
    kind = "linked chain" if cls == "replaced subnetwork" else "neuron path"
    evidence: dict[str, object] = {
        "chain": [
            {**step, **({"evidence": fp.evidence} if fp.evidence else {})}
            for step, fp in zip(
                [
                    {
                        "tensor": fp.tensor,
                        "kind": fp.kind,
                        "in_channels": list(fp.in_channels),
                        "out_channels": list(fp.out_channels),
                    }
                    for fp in path
                ],
                path,
                strict=True,
            )
        ],
        "target_logits": target,
        "channel_params": {p: list(idx) for p, idx in params},
        "layers_linked_by": graph.source,
    }
    for fp in path:
        verdicts[fp.tensor] = Verdict(fp.tensor, cls, kind, {"channels": list(fp.out_channels)})
    for p, idx in params:
        verdicts[p] = Verdict(p, cls, "chain channel parameter", {"indices": list(idx)})
    what = "replaced subnetwork" if cls == "replaced subnetwork" else "handcrafted neuron path"
    events.append(
        Event(
            cls,
            kind,
            tuple(fp.tensor for fp in path) + tuple(p for p, _ in params),
            f"{what} through {len(path)} layers: "
            + " -> ".join(steps)
            + (f"; target logit {target}" if target else "")
            + (f"; {len(params)} per-channel tensors changed at chain channels" if params else ""),
            evidence,
            {fp.tensor: fp.out_channels or fp.targets for fp in path},
        )
    )


def _rank_verdicts(
    pairs: dict[str, TensorPair],
    profiles: dict[str, RankProfile],
    verdicts: dict[str, Verdict],
    events: list[Event],
    suspicious_zeros: dict[str, dict[str, object]],
) -> None:
    def sparse(name: str) -> bool:
        w = pairs[name].diff.where
        if w is None or not w.rows or w.n_rows < 16:
            return False
        few_rows = len(w.rows) <= max(2, SPARSE_ROWS * w.n_rows)
        few_cols = bool(w.cols) and w.n_cols >= 16 and len(w.cols) <= max(2, SPARSE_ROWS * w.n_cols)
        # Training touches every row and column of a weight it updates (even when low
        # storage precision leaves some elements unchanged, the survivors are scattered
        # over the whole matrix); a change whose rows x columns cover a small part of
        # the tensor is a planted block, however dense its spectrum.
        confined = (
            bool(w.cols)
            and w.n_cols >= 16
            and (len(w.rows) / w.n_rows) * (len(w.cols) / w.n_cols) <= BLOCK_AREA
        )
        return few_rows or few_cols or confined

    # Shared dominant direction (abliteration): compare top singular vectors.
    dominant = {
        n: pr
        for n, pr in profiles.items()
        if pr.status == "low-rank" and pr.top_share >= 0.9 and pr.left is not None
    }
    vectors: list[tuple[str, np.ndarray]] = []
    for n, pr in dominant.items():
        vectors.append((n, pr.left))  # type: ignore[arg-type]
        vectors.append((n, pr.right))  # type: ignore[arg-type]
    groups: list[set[str]] = []
    used: set[int] = set()
    for i, (n, v) in enumerate(vectors):
        if i in used:
            continue
        members = {n}
        for j in range(i + 1, len(vectors)):
            m, w = vectors[j]
            if m != n and w.shape == v.shape and abs(float(v @ w)) >= SHARED_COS:
                members.add(m)
                used.add(j)
        if len(members) >= SHARED_MIN:
            groups.append(members)
    shared = set().union(*groups) if groups else set()
    for g in groups:
        names = tuple(sorted(g))
        for n in names:
            verdicts[n] = Verdict(n, "localized edit", "shared direction", profiles[n].summary())
        events.append(
            Event(
                "localized edit",
                "one direction removed from many tensors",
                names,
                f"{len(names)} tensors changed by rank-1 updates along one shared direction "
                "(abliteration-like): " + ", ".join(names[:6]) + ("..." if len(names) > 6 else ""),
                {"tensors": list(names), "min_abs_cosine": SHARED_COS},
            )
        )
    low = [n for n, pr in profiles.items() if pr.status == "low-rank" and n not in shared]
    full = [n for n, pr in profiles.items() if pr.status == "full-rank"]
    few_tensors = len(low) + len(full) <= 2
    for n in low:
        pr = profiles[n]
        if (pr.rank or 0) <= 2 and few_tensors:
            verdicts[n] = Verdict(n, "localized edit", f"rank-{pr.rank} edit", pr.summary())
            events.append(
                Event(
                    "localized edit",
                    "rank-1 edit of one tensor" if pr.rank == 1 else "rank-2 edit of one tensor",
                    (n,),
                    f"{n}: the change is rank {pr.rank} (top direction holds "
                    f"{pr.top_share:.1%} of its energy; residual {pr.residual:.2f}x rounding "
                    "noise): a direct knowledge edit (ROME-like)",
                    pr.summary(),
                )
            )
        else:
            verdicts[n] = Verdict(n, "low-rank update", f"rank {pr.rank}", pr.summary())
    mostly_finetune = len(full) >= max(3, 0.5 * len(profiles))
    for n, pr in profiles.items():
        if n in verdicts:
            continue
        if pr.status == "indeterminate":
            verdicts[n] = Verdict(n, "indeterminate update", "below rounding noise", pr.summary())
        elif sparse(n) and not mostly_finetune and n not in suspicious_zeros:
            w = pairs[n].diff.where
            verdicts[n] = Verdict(n, "localized edit", "confined change", pr.summary())
            events.append(
                Event(
                    "localized edit",
                    "change confined to a few rows, columns or a block",
                    (n,),
                    f"{n}: change confined to {w.describe() if w else 'a few rows'}",  # type: ignore[union-attr]
                    pr.summary(),
                )
            )
        else:
            verdicts[n] = Verdict(n, "full fine-tune", "full-rank dense change", pr.summary())
