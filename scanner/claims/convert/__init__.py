"""``convert``: the same model in another container, possibly renamed and laid out anew.

A conversion keeps every value. Trusted and deployed tensors are paired, in order:

1. by name, then by content digest (the diff engine's renames);
2. through the graphs, when both artifacts have one: weights the graph diff proves equal
   (stored under other names, folded by the exporter, reordered in the graph);
3. by value under the layout changes converters make (:mod:`.match`): reshaped,
   transposed, recurrent gates reordered, concatenated or split;
4. BatchNormalization folded into the preceding convolution (:mod:`.bnfold`), within a
   bound derived from float32 rounding.

What remains is judged by what it is:

* a trusted tensor with no elements, or PyTorch's BatchNorm batch counter
  (``num_batches_tracked``, training state), carries nothing a converter must keep;
* a deployed tensor that the deployed graph uses as structure (shapes, axes, scalars,
  slice bounds: :mod:`.roles`), when the trusted artifact has no graph to compare it
  with, belongs to the graph, which the single-graph checks judge (the graph analyzer
  runs them); the same for trusted structure when the deployed artifact has no graph;
* anything else fails: a trusted tensor with no deployed counterpart is missing, a
  deployed parameter with no trusted origin was added, and a fold that holds except in
  some channels names those channels.

``convert:no-transpose`` rejects pairings that permute axes.
"""

from __future__ import annotations

from collections.abc import Sequence

from scanner.artifact import Artifact
from scanner.claims.base import ClaimOutcome, TensorVerdict
from scanner.claims.convert.bnfold import Fold, FoldFailure, batchnorm_sets, find_folds
from scanner.claims.convert.match import (
    Match,
    NearTile,
    Side,
    match_all,
    near_matches,
    near_tiles,
)
from scanner.claims.convert.roles import RECURRENT, Role, tensor_roles
from scanner.claims.grammar import Claim
from scanner.diff.model import TensorDiff, TensorStatus

CLASS = "conversion"
STRUCTURE = "graph structure"


def check_convert(
    trusted: Artifact, deployed: Artifact, claim: Claim, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    allow_transpose = claim.param("transpose", "allow") == "allow"
    dropped = tuple(m.strip(".") for m in (claim.param("drop") or "").split(",") if m.strip("."))
    verdicts: list[TensorVerdict] = []
    notes: list[str] = []
    t_left: list[str] = []
    d_left: list[str] = []
    for t in diffs:
        if t.status is TensorStatus.RENAMED:
            verdicts.append(_ok(t.name, (t.deployed_name or t.name,), "renamed", "renamed"))
        elif t.status is TensorStatus.REMOVED:
            t_left.append(t.name)
        elif t.status is TensorStatus.ADDED:
            d_left.append(t.name)
        elif t.status in (TensorStatus.CHANGED, TensorStatus.SHAPE_CHANGED):
            t_left.append(t.name)
            d_left.append(t.deployed_name or t.name)
    t_roles, d_roles = tensor_roles(trusted), tensor_roles(deployed)
    one_graph = (t_roles is None) != (d_roles is None)
    t_side = Side(trusted, t_left, _gates(t_roles) if one_graph else {})
    d_side = Side(deployed, d_left, _gates(d_roles) if one_graph else {})

    matches: list[Match] = []
    if t_roles is not None and d_roles is not None:
        matches += _through_graphs(trusted, deployed, t_side, d_side)
    matches += match_all(t_side, d_side)
    counts: dict[str, int] = {}
    for m in matches:
        counts[m.kind] = counts.get(m.kind, 0) + 1
        if m.kind == "transposed" and not allow_transpose:
            verdicts += [
                _bad(n, m.deployed, f"{m.how}: the claim forbids transposes", "transposed")
                for n in m.trusted
            ]
            continue
        for n in m.trusted:
            verdicts.append(_ok(n, m.deployed, m.kind, m.how, m.stats))
    folds, fold_failures = find_folds(t_side, d_side, _conv_pairs(deployed, d_side))
    for f in folds:
        counts["BatchNorm folded"] = counts.get("BatchNorm folded", 0) + 1
        for n in f.trusted:
            verdicts.append(_ok(n, f.deployed, "BatchNorm folded", _fold_text(f), _fold_stats(f)))
    for ff in fold_failures:
        t_side.drop(ff.trusted)
        d_side.drop(ff.deployed)
        for n in ff.trusted:
            verdicts.append(_fold_failure(n, ff))

    for tile in (
        *near_tiles(d_side, t_side, split=False),
        *near_tiles(t_side, d_side, split=True),
    ):
        verdicts += _tile_verdicts(tile)
    for nm in near_matches(t_side, d_side):
        verdicts.append(
            TensorVerdict(
                nm.trusted,
                (nm.deployed,),
                False,
                CLASS,
                f"{nm.trusted} -> {nm.deployed} ({nm.how}): {nm.changed:,} of {nm.total:,} "
                f"elements changed, in {len(nm.rows)} rows {_rows_text(nm.rows)}",
                stats={"kind": "changed", "layout": nm.how, "changed": nm.changed},
                rows=nm.rows,
                axis=nm.axis,
                problem="changed",
            )
        )
    bn_prefixes = set(batchnorm_sets(Side(trusted, trusted.tensors, {})))
    for name in t_side.names:
        info = trusted.tensors[name]
        role = t_roles.get(name) if t_roles is not None else None
        if info.n_elements == 0:
            verdicts.append(_ok(name, (), "empty", "no elements: nothing to carry over"))
        elif _batch_counter(name, bn_prefixes):
            verdicts.append(
                _ok(name, (), "training state", "BatchNorm batch counter (training state)")
            )
        elif role is not None and not role.parameter:
            if d_roles is None:
                verdicts.append(_structure(name, role, "trusted"))
            # with graphs on both sides, structure is the graph diff's business
        elif _under(name, dropped):
            verdicts.append(
                _ok(name, (), "dropped", f"{name}: left out of the conversion, as claimed")
            )
        else:
            verdicts.append(
                _bad(
                    name,
                    (),
                    f"{name}: missing after conversion (no deployed tensor holds its values "
                    "renamed, reshaped, transposed, gate-reordered, concatenated, split or "
                    "folded)",
                    "missing",
                )
            )
    for name in d_side.names:
        info = deployed.tensors[name]
        role = d_roles.get(name) if d_roles is not None else None
        if info.n_elements == 0:
            verdicts.append(_ok(name, (name,), "empty", "no elements"))
        elif role is not None and not role.parameter:
            if t_roles is None:
                verdicts.append(_structure(name, role, "deployed"))
        else:
            where = f" (read as {role.describe()})" if role is not None else ""
            verdicts.append(
                _bad(
                    name,
                    (name,),
                    f"{name}: deployed parameter{where} with no trusted origin",
                    "added",
                )
            )
    for module in dropped:
        # A claimed drop is a statement about the pair: one that drops nothing is false.
        if not any(
            v.stats.get("kind") == "dropped" and _under(v.tensor, (module,)) for v in verdicts
        ):
            verdicts.append(
                _bad(
                    module,
                    (),
                    f"{module}: claimed dropped, but no trusted tensor under it is missing "
                    "from the deployed artifact",
                    "drop",
                )
            )
    if counts:
        notes.append("paired: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    evidence = {
        "formats": [trusted.format, deployed.format],
        "pairings": counts,
        "transposed": [v.tensor for v in verdicts if v.stats.get("kind") == "transposed"],
        "structure": sum(1 for v in verdicts if v.change_class == STRUCTURE),
    }
    return ClaimOutcome(str(claim), tuple(verdicts), tuple(notes), evidence, applicable=True)


def _under(name: str, modules: tuple[str, ...]) -> bool:
    """``name`` is a tensor of one of ``modules`` (dotted module paths)."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def _gates(roles: dict[str, Role] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, role in (roles or {}).items():
        ops = role.ops & set(RECURRENT)
        if len(ops) == 1:
            out[name] = ops.pop()
    return out


def _through_graphs(
    trusted: Artifact, deployed: Artifact, t_side: Side, d_side: Side
) -> list[Match]:
    """Weights the graph diff pairs through the graph and proves equal."""
    from scanner.graph.of_artifact import graph_diff_of

    gd = graph_diff_of(trusted, deployed)
    if gd is None:
        return []
    out: list[Match] = []
    for c in gd.weight_checks:
        if not c.ok or c.quantized:
            continue
        t_names = [k for k in c.trusted if k in t_side.names]
        d_names = [k for k in c.deployed if k in d_side.names]
        if not t_names and not d_names:
            continue
        how = f"equal through the graph ({c.derivation})"
        out.append(Match(tuple(t_names), tuple(d_names), "through the graph", how))
        t_side.drop(t_names)
        d_side.drop(d_names)
    return out


def _conv_pairs(deployed: Artifact, d_side: Side) -> list[tuple[str, str]]:
    """(weight, bias) stored tensors of the deployed graph's convolutions."""
    from scanner.graph.of_artifact import canonical_of

    g = canonical_of(deployed)
    if g is None:
        return []
    out = []
    for n in g.nodes.values():
        if n.op != "Conv" or len(n.inputs) < 2:
            continue
        w = g.consts.get(n.inputs[1])
        b = g.consts.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        if w is None or len(w.sources) != 1 or w.sources[0] not in d_side.names:
            continue
        bias = b.sources[0] if b is not None and len(b.sources) == 1 else ""
        out.append((w.sources[0], bias))
    return out


def _tile_verdicts(tile: NearTile) -> list[TensorVerdict]:
    """Verdicts for a concatenation (or split) that holds except in some elements: the
    parts with changed elements fail, located in their own rows."""
    out = []
    joined = ", ".join(p.name for p in tile.parts)
    for p in tile.parts:
        if tile.whole_side == "deployed":
            trusted, deployed = p.name, (tile.whole,)
            what = f"{p.name} ({p.how}) concatenated into {tile.whole} with {joined}"
        else:
            trusted, deployed = tile.whole, (p.name,)
            what = f"{tile.whole} split into {joined}: part {p.name} ({p.how})"
        if not p.changed:
            out.append(_ok(trusted, deployed, "concatenated", what))
            continue
        out.append(
            TensorVerdict(
                trusted,
                deployed,
                False,
                CLASS,
                f"{what}: {p.changed:,} elements changed, in {len(p.rows)} rows "
                f"{_rows_text(p.rows)} of {p.name}",
                stats={"kind": "changed", "layout": p.how, "changed": p.changed},
                rows=p.rows,
                axis=p.axis,
                problem="changed",
            )
        )
    return out


def _rows_text(rows: tuple[int, ...]) -> str:
    shown = ", ".join(str(r) for r in rows[:8])
    return f"[{shown}{', ...' if len(rows) > 8 else ''}]"


def _batch_counter(name: str, bn_prefixes: set[str]) -> bool:
    return name.endswith(".num_batches_tracked") and name.rsplit(".", 1)[0] in bn_prefixes


def _ok(
    tensor: str,
    deployed: tuple[str, ...],
    kind: str,
    how: str,
    stats: dict[str, object] | None = None,
) -> TensorVerdict:
    return TensorVerdict(
        tensor,
        deployed,
        True,
        CLASS,
        f"{tensor}: {how}",
        stats={"kind": kind, "layout": how, **(stats or {})},
    )


def _bad(tensor: str, deployed: tuple[str, ...], message: str, problem: str) -> TensorVerdict:
    return TensorVerdict(tensor, deployed, False, CLASS, message, problem=problem)


def _structure(name: str, role: Role, side: str) -> TensorVerdict:
    other = "deployed" if side == "trusted" else "trusted"
    return TensorVerdict(
        name,
        (name,) if side == "deployed" else (),
        True,
        STRUCTURE,
        f"{name}: {side} graph structure ({role.describe()}); the {other} artifact has no "
        "graph to compare it with, the single-graph checks judge it",
        stats={"kind": STRUCTURE, "side": side, "readers": [list(r) for r in role.readers]},
    )


def _fold_text(f: Fold) -> str:
    return (
        f"BatchNorm {f.trusted[-4].rsplit('.', 1)[0]} folded into {f.deployed[0]} "
        f"(eps {f.eps:g}, largest error {f.max_error_rounding:.2f} of the float32 "
        "rounding bound)"
    )


def _fold_stats(f: Fold) -> dict[str, object]:
    return {"eps": f.eps, "error_in_bounds": f.max_error_rounding, "parts": list(f.trusted)}


def _fold_failure(name: str, ff: FoldFailure) -> TensorVerdict:
    return TensorVerdict(
        name,
        ff.deployed,
        False,
        CLASS,
        f"{name}: {ff.deployed[0]} is the BatchNorm fold of {', '.join(ff.trusted[:2])} "
        f"except in {len(ff.channels)} output channels (worst channel {ff.worst['channel']}: "
        f"{ff.worst['error_in_bounds']:.3g} times the rounding bound)",
        stats={"kind": "BatchNorm folded", **ff.worst},
        rows=ff.channels,
        axis=0,
        problem="fold",
    )
