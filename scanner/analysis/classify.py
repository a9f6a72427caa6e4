"""Classify every changed tensor of a pair, then the pair.

Order matters: bit-level footprints first (they are exact), then exact-zero patterns
(pruning and its look-alikes), then the connectivity detectors (replaced subnetwork,
handcrafted path), then the prune-candidate test, then explain-or-fail for what is left
(:mod:`scanner.analysis.explain`): storage noise element by element, outlier regions and
confined changes as localized edits, a diffuse remainder as a full fine-tune, low rank
as an adapter merge only in a consistent module set across layers (otherwise a
knowledge edit), one direction in many tensors as abliteration.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scanner.analysis.bits import analyze_bits
from scanner.analysis.events import Event, Verdict
from scanner.analysis.explain import explain
from scanner.analysis.layers import LayerGraph, infer_layers
from scanner.analysis.pruning import analyze_prune_activated, analyze_zeros
from scanner.analysis.sra import (
    Footprint,
    chain_params,
    link,
    neuron_footprint,
    sra_footprint,
)
from scanner.analysis.tensors import TensorPair, analysed_together, load_pair
from scanner.artifact import Artifact
from scanner.diff.model import TensorDiff, TensorStatus, class_rank

__all__ = ["Event", "Verdict", "WeightAnalysis", "analyze_pair"]

FOLLOWED = ("low-rank update", "full fine-tune", "pruning")
"""Classes a diffuse change of a vector (bias, norm) takes from the pair's matrices."""


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
    """Classify every changed tensor, stage by stage: each stage judges what the earlier
    ones left, and whatever no footprint claims is explained or fails (``explain``)."""
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

    def rest() -> dict[str, TensorPair]:
        return {n: p for n, p in pairs.items() if n not in verdicts}

    _bit_footprints(pairs, verdicts, events)
    suspicious_zeros = _exact_zeros(rest(), verdicts)
    graph = _connectivity(rest(), deployed, verdicts, events)
    _prune_footprints(rest(), suspicious_zeros, verdicts, events)
    shapes = {n: tuple(info.shape) for n, info in trusted.tensors.items()}
    explain(pairs, list(rest()), shapes, verdicts, events)
    _follow_pair(pairs, verdicts)
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


def _bit_footprints(
    pairs: Mapping[str, TensorPair], verdicts: dict[str, Verdict], events: list[Event]
) -> None:
    """Stage 1: low-byte payloads and sign/exponent flips."""
    flips: list[tuple[str, dict[str, object]]] = []
    for name, bit in analysed_together(pairs, analyze_bits).items():
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


def _exact_zeros(
    rest: Mapping[str, TensorPair], verdicts: dict[str, Verdict]
) -> dict[str, dict[str, object]]:
    """Stage 2: weights set to exactly zero. Pruning and drop-and-rescale are classified;
    zeros on weights pruning would keep are returned for the prune stage to judge."""
    suspicious: dict[str, dict[str, object]] = {}
    for name, p in rest.items():
        z = analyze_zeros(p)
        if z is None:
            continue
        if z.benign:
            cls = "full fine-tune" if z.kind == "drop-and-rescale" else "pruning"
            verdicts[name] = Verdict(name, cls, z.kind, z.evidence)
        else:
            suspicious[name] = z.evidence
    return suspicious


def _connectivity(
    rest: Mapping[str, TensorPair],
    deployed: Artifact,
    verdicts: dict[str, Verdict],
    events: list[Event],
) -> LayerGraph | None:
    """Stage 3: replaced subnetworks and handcrafted paths, linked through the layers."""
    multi = {n: p for n, p in rest.items() if len(p.shape) >= 2}
    if not multi:
        return None
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
    return graph


def _prune_footprints(
    rest: Mapping[str, TensorPair],
    suspicious_zeros: Mapping[str, dict[str, object]],
    verdicts: dict[str, Verdict],
    events: list[Event],
) -> None:
    """Stage 4: changes that hide on prune candidates, and zeros pruning would keep."""
    matrices = {name: p for name, p in rest.items() if len(p.shape) >= 2}
    for name, pa in analysed_together(matrices, analyze_prune_activated).items():
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
    for name, ev in suspicious_zeros.items():
        if name in verdicts:
            continue
        verdicts[name] = Verdict(name, "localized edit", "zeros on non-candidates", ev)
        events.append(
            Event(
                "localized edit",
                "zeros written on weights pruning would keep",
                (name,),
                f"{name}: {ev['new_zeros']} weights set to exactly zero, only "
                f"{ev['candidate_share']:.0%} of them prune candidates",
                ev,
            )
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


def _follow_pair(pairs: dict[str, TensorPair], verdicts: dict[str, Verdict]) -> None:
    """A diffuse change of a vector has no rank of its own: it takes the pair's dominant
    training class (a LoRA merge may also move biases); pruning leaves biases alone, so
    a bias change next to pruning is fine-tuning."""
    dominant = Counter(
        v.cls for n, v in verdicts.items() if v.cls in FOLLOWED and len(pairs[n].shape) >= 2
    )
    if not dominant:
        return
    cls = dominant.most_common(1)[0][0]
    cls = "full fine-tune" if cls == "pruning" else cls
    for n, v in list(verdicts.items()):
        if v.kind == "diffuse change" and v.cls == "full fine-tune" and n in pairs:
            verdicts[n] = Verdict(n, cls, "follows pair", v.evidence)
