"""``prune:channel:remove``: structured pruning that deletes channels.

Removing output channels of a layer shrinks a chain of tensors together: the layer's
weight along axis 0, its bias and the normalization parameters that follow (vectors),
and the next layer's weight along axis 1 (its input channels). The re-derivation:

1. Kept index sets. A tensor whose shape shrank along exactly one axis fixes the kept
   indices along it: each deployed slice must equal a trusted slice, in order (the
   earliest match, so equal slices cannot reorder). Sets are pooled by (trusted size,
   deployed size).
2. Every shape-changed tensor must equal the trusted tensor restricted to kept sets from
   the pool along each shrunk axis (a tensor that shrank along two axes, a layer whose
   inputs and outputs were both pruned, takes one set per axis), exactly: kept values
   never change.
3. The removed channels are the weakest: for a set fixed along axis 0 of a weight, every
   removed channel's norm (L1 or L2) is at most every kept channel's; for a set fixed
   only by vectors, the removed |values| (e.g. a normalization scale, as network
   slimming prunes) are at most the kept ones.

Tensors that changed values without changing shape are not explained by removal.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from scanner.artifact import Artifact
from scanner.claims.base import ClaimOutcome, TensorVerdict
from scanner.claims.grammar import Claim
from scanner.diff.model import TensorDiff, TensorStatus

MAX_COMBOS = 64


def _kept_along(w: np.ndarray, d: np.ndarray, axis: int) -> np.ndarray | None:
    """Indices of ``w`` along ``axis`` whose slices, in order, are ``d``'s slices."""
    wm = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    dm = np.moveaxis(d, axis, 0).reshape(d.shape[axis], -1)
    if wm.shape[1] != dm.shape[1]:
        return None
    out: list[int] = []
    j = 0
    for i in range(wm.shape[0]):
        if j < dm.shape[0] and np.array_equal(wm[i], dm[j], equal_nan=True):
            out.append(i)
            j += 1
    return np.array(out, np.int64) if j == dm.shape[0] else None


def check_removal(
    trusted: Artifact, deployed: Artifact, claim: Claim, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    shrunk = [t for t in diffs if t.status is TensorStatus.SHAPE_CHANGED]
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    pool: dict[tuple[int, int], list[tuple[np.ndarray, str, int]]] = {}
    verdicts: list[TensorVerdict] = []
    pending: list[TensorDiff] = []
    for t in shrunk:
        d_name = t.deployed_name or t.name
        w = trusted.to_float(t.name).reshape(trusted.tensors[t.name].shape)
        d = deployed.to_float(d_name).reshape(deployed.tensors[d_name].shape)
        arrays[t.name] = (w, d)
        axes = _shrunk_axes(w.shape, d.shape)
        if axes is None:
            verdicts.append(_bad(t, f"shape {list(w.shape)} -> {list(d.shape)} is not a removal"))
            continue
        if len(axes) == 1:
            kept = _kept_along(w, d, axes[0])
            if kept is not None:
                pool.setdefault((w.shape[axes[0]], d.shape[axes[0]]), []).append(
                    (kept, t.name, axes[0])
                )
        pending.append(t)
    for t in pending:
        w, d = arrays[t.name]
        axes = _shrunk_axes(w.shape, d.shape) or []
        options = [_distinct(pool.get((w.shape[a], d.shape[a]), [])) for a in axes]
        match = None
        for combo in itertools.islice(itertools.product(*options), MAX_COMBOS):
            sub = w
            for a, (kept, _, _) in zip(axes, combo, strict=True):
                sub = np.take(sub, kept, axis=a)
            if np.array_equal(sub, d, equal_nan=True):
                match = combo
                break
        if match is None:
            verdicts.append(
                _bad(t, "kept values are not the trusted values of any consistent channel set")
            )
            continue
        verdicts.append(
            TensorVerdict(
                t.name,
                (t.deployed_name or t.name,),
                True,
                "pruning",
                f"{t.name}: {list(w.shape)} -> {list(d.shape)}, kept values unchanged",
                stats={
                    "method": "channel-remove",
                    "removed": {str(a): int(w.shape[a] - d.shape[a]) for a in axes},
                },
            )
        )
    verdicts += _weakest(pool, arrays)
    for t in diffs:
        if t.status is TensorStatus.CHANGED:
            verdicts.append(_bad(t, "values changed without a shape change", problem="changed"))
    return ClaimOutcome(
        str(claim),
        tuple(verdicts),
        applicable=bool(shrunk),
        evidence={"method": "channel-remove", "channel_sets": len(pool)},
    )


def _shrunk_axes(a: tuple[int, ...], b: tuple[int, ...]) -> list[int] | None:
    if len(a) != len(b) or any(y > x for x, y in zip(a, b, strict=True)):
        return None
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if y < x]


def _distinct(entries: list[tuple[np.ndarray, str, int]]) -> list[tuple[np.ndarray, str, int]]:
    out: list[tuple[np.ndarray, str, int]] = []
    for e in entries:
        if not any(np.array_equal(e[0], o[0]) for o in out):
            out.append(e)
    return out


def _bad(t: TensorDiff, msg: str, problem: str = "removal") -> TensorVerdict:
    return TensorVerdict(
        t.name, (t.deployed_name or t.name,), False, "pruning", f"{t.name}: {msg}", problem=problem
    )


def _weakest(
    pool: dict[tuple[int, int], list[tuple[np.ndarray, str, int]]],
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
) -> list[TensorVerdict]:
    """For each distinct kept set: the removed channels are the lowest-norm ones by at
    least one of the tensors that fixed the set (a weight's output channels, or a
    vector's magnitudes)."""
    out: list[TensorVerdict] = []
    for (n, _), entries in pool.items():
        for kept, _, _ in _distinct(entries):
            removed = np.setdiff1d(np.arange(n), kept)
            owners = [e for e in entries if np.array_equal(e[0], kept)]
            ok_by = _criterion_holds(owners, arrays, kept, removed)
            if ok_by:
                continue
            name = owners[0][1]
            worst = removed.tolist()[:64]
            out.append(
                TensorVerdict(
                    name,
                    (),
                    False,
                    "pruning",
                    f"{name}: removed channels {worst} are not the lowest-norm channels",
                    rows=tuple(int(r) for r in removed),
                    axis=owners[0][2],
                    problem="criterion",
                    stats={"removed": int(removed.size), "kept": int(kept.size)},
                )
            )
    return out


def _criterion_holds(
    owners: list[tuple[np.ndarray, str, int]],
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    kept: np.ndarray,
    removed: np.ndarray,
) -> str:
    if not removed.size:
        return "nothing removed"
    for _, name, axis in owners:
        w = arrays[name][0]
        rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).astype(np.float64)
        if w.ndim >= 2 and axis != 0:
            continue
        for order in (1, 2):
            norm = np.linalg.norm(rows, ord=order, axis=1)
            if norm[removed].max() <= norm[kept].min(initial=np.inf):
                return f"{name} L{order}"
    return ""
