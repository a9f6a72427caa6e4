"""Explain or fail: the verdict for changed tensors no exact footprint claimed.

Each tensor is fitted (:mod:`scanner.analysis.fit`); then the pair decides:

* storage noise explains a tensor whose every changed element is within the bound;
* outlier regions and confined changes are localized edits, with their rows, columns,
  blocks and elements, whatever the rest of the tensor does;
* a diffuse full-rank remainder is a full fine-tune;
* a diffuse low-rank remainder is a low-rank update only in a consistent module set:
  for every module type it touches (same name up to layer numbers, same shape), every
  layer that has that module changed with low rank (or within storage noise). LoRA
  adapters are applied to a module type in all layers; a rank-k change confined to a
  few tensors or to some (consecutive) layers is a knowledge edit (ROME, MEMIT);
* rank-1 changes sharing one direction in several tensors are abliteration.

Sibling tensors (same module type and shape) also set the outlier thresholds: a tensor
is compared with what its siblings' own changes look like.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from scanner.analysis.events import Event, Verdict
from scanner.analysis.fit import TensorFit, fit_tensor
from scanner.analysis.lowrank import RankProfile
from scanner.analysis.outliers import Thresholds, module_type, sibling_thresholds
from scanner.analysis.tensors import TensorPair, analysed_together

SHARED_COS = 0.9
"""|cosine| above which two tensors' dominant delta directions count as the same."""
SHARED_MIN = 3
"""Tensors sharing one direction before it counts as abliteration-like."""


def sibling_groups(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[str]]:
    """Tensor name -> every tensor of its module type and shape (itself included)."""
    by_key: dict[tuple[str, tuple[int, ...]], list[str]] = defaultdict(list)
    for name, shape in shapes.items():
        by_key[(module_type(name), tuple(shape))].append(name)
    return {n: by_key[(module_type(n), tuple(s))] for n, s in shapes.items()}


def fit_all(
    pairs: Mapping[str, TensorPair], groups: Mapping[str, list[str]]
) -> dict[str, TensorFit]:
    """Fit every pair; tensors with outliers are fitted again with thresholds raised to
    what their changed siblings show."""
    fits = analysed_together(pairs, fit_tensor)
    stats = {n: f.outliers.stats for n, f in fits.items() if f.outliers is not None}
    for n, f in list(fits.items()):
        if f.outliers is None or not f.outliers.found:
            continue
        limits = sibling_thresholds(stats, n, groups)
        if limits != Thresholds():
            fits[n] = fit_tensor(pairs[n], limits)
    return fits


def explain(
    pairs: Mapping[str, TensorPair],
    names: list[str],
    shapes: Mapping[str, tuple[int, ...]],
    verdicts: dict[str, Verdict],
    events: list[Event],
) -> dict[str, TensorFit]:
    """Verdicts (and events) for ``names``; returns the fits for evidence."""
    groups = sibling_groups(shapes)
    fits = fit_all({n: pairs[n] for n in names}, groups)
    low: dict[str, RankProfile] = {}
    # Siblings whose change reads as low rank without the margin to certify it (an
    # adapter's weakest direction near the noise) still belong to the adapter's module set.
    lowish = {n for n, f in fits.items() if f.rank is not None and f.rank.status == "low-rank"}
    for n, f in fits.items():
        ev = f.evidence()
        if f.noise.within:
            verdicts[n] = Verdict(n, "rounding noise", f.noise.kind, ev)
            continue
        edited = f.outliers is not None and f.outliers.found
        if edited or f.remainder == "confined":
            verdicts[n] = Verdict(n, "localized edit", _edit_kind(f), ev)
            events.append(_edit_event(f, pairs[n], ev))
            if f.low_rank:
                low[n] = f.rank  # type: ignore[assignment]  # its remainder still counts for its module set
        elif f.remainder == "none":
            verdicts[n] = Verdict(n, "rounding noise", "storage rounding", ev)
        elif f.low_rank:
            low[n] = f.rank  # type: ignore[assignment]
            verdicts[n] = Verdict(n, "low-rank update", f"rank {f.rank.rank}", ev)
        elif f.rank is not None and f.rank.status == "full-rank":
            verdicts[n] = Verdict(n, "full fine-tune", "full-rank diffuse change", ev)
        else:
            verdicts[n] = Verdict(n, "full fine-tune", "diffuse change", ev)
    shared = _shared_directions(low, verdicts, events)
    _low_rank_sets(
        {n: p for n, p in low.items() if n not in shared}, lowish, groups, verdicts, events
    )
    return fits


def _edit_kind(f: TensorFit) -> str:
    if f.outliers is not None and f.outliers.found:
        return "outlier region" if f.remainder == "diffuse" else "edited region"
    return "confined change"


def _edit_event(f: TensorFit, pair: TensorPair, evidence: dict[str, object]) -> Event:
    parts = []
    rows: set[int] = set()
    cols: set[int] = set()
    if f.outliers is not None and f.outliers.found:
        o = f.outliers
        parts.append(o.describe())
        rows.update(o.rows)
        rows.update(r for r, _ in o.tiles)
        rows.update(r for r, _ in o.elements)
        cols.update(o.cols)
    if f.remainder == "confined":
        rows.update(f.confined_rows)
        cols.update(f.confined_cols)
        parts.append(
            f"{f.beyond} element(s) beyond storage noise confined to "
            f"{len(f.confined_rows)} row(s) {_short(f.confined_rows)} and "
            f"{len(f.confined_cols)} column(s) {_short(f.confined_cols)}, "
            "the rest of the tensor unchanged"
        )
    if f.remainder == "diffuse":
        context = "far outside the diffuse change of the rest of the tensor (fine-tune-like)"
        kind = "region far outside a diffuse change"
    else:
        context = "with nothing else in the tensor changed beyond storage noise"
        kind = "change confined to a few rows, columns or elements"
    changed = pair.changed
    moved = pair.deployed[changed].astype(np.float64) - pair.trusted[changed]
    largest_change = float(np.max(np.abs(moved))) if moved.size else 0.0
    largest_weight = max(float(np.max(pair.trusted)), -float(np.min(pair.trusted)))
    message = (
        f"{pair.name}: " + "; ".join(parts) + f" changed {context}"
        f" (max |change| {largest_change:.4g}, weights' max |w| {largest_weight:.4g})"
    )
    return Event(
        "localized edit",
        kind,
        (pair.name,),
        message,
        evidence,
        {pair.name: tuple(sorted(rows))},
        # columns of a matrix are the tensor's axis 1; of a conv's flattened view they
        # are not, and its edits are located by output channel
        {pair.name: tuple(sorted(cols))} if len(pair.shape) == 2 else {},
    )


def _short(idx: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, idx[:8])) + (", ...]" if len(idx) > 8 else "]")


def _shared_directions(
    low: Mapping[str, RankProfile], verdicts: dict[str, Verdict], events: list[Event]
) -> set[str]:
    """Abliteration: rank-1 deltas of several tensors along one shared direction."""
    dominant = {n: pr for n, pr in low.items() if pr.top_share >= 0.9 and pr.left is not None}
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
    shared: set[str] = set().union(*groups) if groups else set()
    for g in groups:
        names = tuple(sorted(g))
        for n in names:
            verdicts[n] = Verdict(n, "localized edit", "shared direction", low[n].summary())
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
    return shared


def _low_rank_sets(
    low: Mapping[str, RankProfile],
    lowish: set[str],
    groups: Mapping[str, list[str]],
    verdicts: dict[str, Verdict],
    events: list[Event],
) -> None:
    """Low-rank tensors outside a consistent module set are a knowledge edit."""
    covered = {n for n, v in verdicts.items() if v.cls == "rounding noise"} | set(low) | lowish
    edits: list[str] = []
    for n in low:
        siblings = groups.get(n, [n])
        if verdicts[n].cls != "low-rank update":
            continue  # already an edit (outlier region); its remainder only counted above
        if len(siblings) < 2 or not all(s in covered for s in siblings):
            edits.append(n)
    if not edits:
        return
    names = tuple(sorted(edits))
    missing = {
        module_type(n): sorted(s for s in groups.get(n, [n]) if s not in covered) for n in names
    }
    for n in names:
        verdicts[n] = Verdict(n, "localized edit", f"rank-{low[n].rank} edit", verdicts[n].evidence)
    ranks = ", ".join(f"{n} (rank {low[n].rank})" for n in names[:8])
    singles = [t for t, miss in missing.items() if not miss]
    why = (
        "a low-rank change of a module that has no sibling in other layers"
        if singles and len(singles) == len(missing)
        else "the same modules in other layers are unchanged or not low-rank"
    )
    events.append(
        Event(
            "localized edit",
            "low-rank edit of a few tensors",
            names,
            f"low-rank change confined to {len(names)} tensor(s): {ranks}"
            + ("..." if len(names) > 8 else "")
            + f"; {why}: a direct knowledge edit (ROME/MEMIT-like), not an adapter merge",
            {
                "tensors": {n: low[n].summary() for n in names},
                "module_types": {t: {"not_low_rank": miss[:32]} for t, miss in missing.items()},
            },
        )
    )
