"""``prune``: deployed weights equal the trusted ones except for new zeros, and the zeros
follow the claimed criterion.

* ``magnitude`` (unstructured): the pruned set is the k smallest |w| of the tensor (or of
  each row with ``per-row``), k = number of new zeros; ties at the threshold go either way.
  ``global`` (one threshold over every pruned tensor, as global magnitude pruning does):
  no zeroed weight of any tensor is larger than a kept weight of any other. Without a
  scope, a per-tensor explanation is tried first and the global one when it fails.
* ``nm`` (N:M, e.g. 2:4): in every group of M consecutive weights along the last axis at
  most N are nonzero and the zeros are the group's smallest |w|.
* ``channel``: whole output channels (axis 0) are zeroed, and they are the channels of
  smallest norm (L1 or L2, the two criteria in use) among the channels still in use
  (channels that were already all zero in the trusted model are neither). A vector
  (bias, normalization parameter) may lose exactly the entries of channels pruned in a
  weight with as many channels. ``remove`` (structured pruning that deletes channels):
  see :mod:`scanner.claims.prune_structured`.
* ``sparsegpt``: kept weights may change (the OBS update compensates removed ones), but
  only in rows that lost weights, since the update of a row is driven by that row's
  pruned weights; the zero criterion is data-dependent and is reported, not enforced.

Violations name the elements (largest |w| first) that were zeroed against the criterion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.claims.base import MAX_REPORTED, ClaimOutcome, TensorVerdict, Violation
from scanner.claims.grammar import Claim
from scanner.diff.model import TensorDiff, TensorStatus

FLOATS = ("F64", "F32", "F16", "BF16")
SPARSITY_TOLERANCE = 0.01


def check_prune(
    trusted: Artifact, deployed: Artifact, claim: Claim, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    if claim.param("remove"):
        from scanner.claims.prune_structured import check_removal

        return check_removal(trusted, deployed, claim, diffs)
    changed = [t for t in diffs if t.status is TensorStatus.CHANGED and t.trusted_dtype in FLOATS]
    method = claim.param("method") or "magnitude"
    scope = claim.param("scope")
    evidence: dict[str, Any] = {"method": method}
    if method == "channel":
        verdicts = _channel_verdicts(trusted, deployed, claim, changed)
    elif method == "magnitude" and scope == "global":
        verdicts = _global_verdicts(trusted, deployed, claim, changed)
        evidence["scope"] = "global"
    else:
        verdicts = [
            check_tensor(trusted, t.name, deployed, t.deployed_name or t.name, claim)
            for t in changed
        ]
        if (
            method == "magnitude"
            and scope is None
            and any(v.problem == "criterion" for v in verdicts)
        ):
            # One threshold over all tensors explains what per-tensor thresholds cannot.
            glob = _global_verdicts(trusted, deployed, claim, changed)
            if all(v.ok for v in glob):
                verdicts = glob
                evidence["scope"] = "global"
    return ClaimOutcome(str(claim), tuple(verdicts), applicable=bool(verdicts), evidence=evidence)


def _global_verdicts(
    trusted: Artifact, deployed: Artifact, claim: Claim, changed: Sequence[TensorDiff]
) -> list[TensorVerdict]:
    """Magnitude pruning with one threshold: the smallest kept |w| over every pruned
    tensor bounds every zeroed |w|."""
    kept_min = np.inf
    for t in changed:
        w = trusted.to_float(t.name)
        d = deployed.to_float(t.deployed_name or t.name)
        if np.count_nonzero((d == 0) & (w != 0)) == 0:
            continue
        kept = np.abs(w[(d != 0) & (w != 0)])
        if kept.size:
            kept_min = min(kept_min, float(kept.min()))
    return [
        check_tensor(
            trusted, t.name, deployed, t.deployed_name or t.name, claim, threshold=kept_min
        )
        for t in changed
    ]


def _channel_verdicts(
    trusted: Artifact, deployed: Artifact, claim: Claim, changed: Sequence[TensorDiff]
) -> list[TensorVerdict]:
    """Channel pruning: weights first, then vectors that follow a pruned channel set."""
    multi = [t for t in changed if len(trusted.tensors[t.name].shape) >= 2]
    vectors = [t for t in changed if len(trusted.tensors[t.name].shape) < 2]
    verdicts = []
    pruned_sets: list[tuple[int, set[int]]] = []
    for t in multi:
        d_name = t.deployed_name or t.name
        v = check_tensor(trusted, t.name, deployed, d_name, claim)
        verdicts.append(v)
        if v.ok:
            d = deployed.to_float(d_name)
            w = trusted.to_float(t.name)
            rows = (d.reshape(d.shape[0], -1) == 0).all(axis=1) & (
                w.reshape(w.shape[0], -1) != 0
            ).any(axis=1)
            pruned_sets.append((d.shape[0], set(np.flatnonzero(rows).tolist())))
    for t in vectors:
        d_name = t.deployed_name or t.name
        w = trusted.to_float(t.name).reshape(-1)
        d = deployed.to_float(d_name).reshape(-1)
        zeroed = set(np.flatnonzero((d == 0) & (w != 0)).tolist())
        other = np.flatnonzero((d != w) & ~((d == 0) & (w != 0)))
        follows = not other.size and any(n == w.size and zeroed <= s for n, s in pruned_sets)
        if follows:
            verdicts.append(
                TensorVerdict(
                    t.name,
                    (d_name,),
                    True,
                    "pruning",
                    f"{t.name}: {len(zeroed)} entries zeroed with their pruned channels",
                    stats={"newly_pruned": len(zeroed), "method": "channel"},
                )
            )
        else:
            verdicts.append(check_tensor(trusted, t.name, deployed, d_name, claim))
    return verdicts


def _viol(
    idx: np.ndarray,
    w: np.ndarray,
    d: np.ndarray,
    shape: tuple[int, ...],
    expected_kept: bool = True,
) -> tuple[Violation, ...]:
    """Violations at flat positions ``idx``, largest |w| first."""
    flat_w, flat_d = w.reshape(-1), d.reshape(-1)
    order = idx[np.argsort(-np.abs(flat_w[idx]), kind="stable")][:MAX_REPORTED]
    return tuple(
        Violation(
            tuple(int(v) for v in np.unravel_index(p, shape)),
            float(flat_w[p]) if expected_kept else 0.0,
            float(flat_d[p]),
            float(flat_w[p]),
        )
        for p in order
    )


def check_tensor(
    trusted: Artifact,
    name: str,
    deployed: Artifact,
    d_name: str,
    claim: Claim,
    threshold: float | None = None,
) -> TensorVerdict:
    """One pruned tensor; ``threshold`` (global magnitude pruning): the smallest kept |w|
    over all pruned tensors, which no zeroed |w| may exceed."""
    w = trusted.to_float(name)
    d = deployed.to_float(d_name)
    shape = w.shape
    method = claim.param("method") or "magnitude"
    pruned = (d == 0) & (w != 0)
    kept = ~pruned
    changed_kept = kept & (d != w) & ~(np.isnan(d) & np.isnan(w))
    n = w.size
    sparsity = float(np.count_nonzero(d == 0)) / n if n else 0.0
    stats: dict[str, Any] = {
        "elements": n,
        "sparsity": round(sparsity, 6),
        "newly_pruned": int(pruned.sum()),
        "method": method,
    }
    deployed_names = (d_name,)

    def fail(problem: str, msg: str, bad: np.ndarray, expected_kept: bool = True) -> TensorVerdict:
        flat = np.flatnonzero(bad.reshape(-1))
        rows = tuple(sorted({int(v) for v in np.unravel_index(flat, shape)[0]})) if w.ndim else ()
        return TensorVerdict(
            name,
            deployed_names,
            False,
            "pruning",
            f"{name}: {msg}",
            stats={**stats, "violating_elements": int(flat.size)},
            violations=_viol(flat, w, d, shape, expected_kept),
            rows=rows,
            problem=problem,
        )

    if method == "sparsegpt":
        rows_lost = pruned.reshape(shape[0], -1).any(axis=1) if w.ndim > 1 else pruned.any()[None]
        rows_upd = changed_kept.reshape(len(rows_lost), -1).any(axis=1)
        stray = rows_upd & ~rows_lost
        kept_delta = np.where(changed_kept, d - w, 0.0)
        stats["kept_updated"] = int(changed_kept.sum())
        stats["kept_rel_l2_change"] = float(
            np.linalg.norm(kept_delta) / max(float(np.linalg.norm(np.where(kept, w, 0))), 1e-30)
        )
        if stray.any():
            mask = changed_kept & np.broadcast_to(stray.reshape((-1,) + (1,) * (w.ndim - 1)), shape)
            return fail(
                "update",
                f"kept weights changed in {int(stray.sum())} rows that lost "
                "no weight (no pruning update explains them)",
                mask,
            )
        ok = _sparsity_ok(claim, sparsity, stats)
        if ok is not None:
            return fail("sparsity", ok, np.zeros(shape, bool))
        return TensorVerdict(
            name,
            deployed_names,
            True,
            "pruning",
            f"{name}: SparseGPT-style pruning, sparsity {sparsity:.2%}, "
            f"{stats['kept_updated']:,} kept weights updated",
            stats=stats,
        )

    if changed_kept.any():
        return fail(
            "kept-changed",
            f"{int(changed_kept.sum()):,} kept weights changed value "
            "(pruning only zeroes weights; claim prune:sparsegpt if updates are "
            "intended)",
            changed_kept,
        )
    if threshold is not None:
        stats["scope"] = "global"
        stats["global_threshold"] = threshold
        bad: np.ndarray | str = pruned & (np.abs(w).astype(np.float64) > threshold)
    else:
        bad = _criterion(method, w, pruned, claim, stats)
    if isinstance(bad, str):
        return fail("layout", bad, np.zeros(shape, bool))
    if bad.any():
        return fail(
            "criterion",
            f"{int(bad.sum()):,} zeroed weights are larger than weights "
            f"the {method} criterion keeps",
            bad,
            expected_kept=True,
        )
    msg_sp = _sparsity_ok(claim, sparsity, stats)
    if msg_sp is not None:
        return fail("sparsity", msg_sp, np.zeros(shape, bool))
    return TensorVerdict(
        name,
        deployed_names,
        True,
        "pruning",
        f"{name}: {method} pruning verified, sparsity {sparsity:.2%}",
        stats=stats,
    )


def _sparsity_ok(claim: Claim, sparsity: float, stats: dict[str, Any]) -> str | None:
    want = claim.param("sparsity")
    if want is None:
        return None
    stats["claimed_sparsity"] = float(want)
    if abs(sparsity - float(want)) > SPARSITY_TOLERANCE:
        return f"sparsity {sparsity:.2%} differs from the claimed {float(want):.2%}"
    return None


def _criterion(
    method: str, w: np.ndarray, pruned: np.ndarray, claim: Claim, stats: dict[str, Any]
) -> np.ndarray | str:
    """Mask of pruned elements that the criterion would have kept."""
    a = np.abs(w).astype(np.float64)
    if method == "magnitude":
        if claim.param("scope") == "per-row" and w.ndim > 1:
            a2, p2 = a.reshape(w.shape[0], -1), pruned.reshape(w.shape[0], -1)
        else:
            a2, p2 = a.reshape(1, -1), pruned.reshape(1, -1)
        # Largest kept-eligible threshold: the k-th smallest |w| among the row.
        kth = _kth_smallest(a2, p2.sum(axis=1) + (a2 == 0).sum(axis=1))
        return (p2 & (a2 > kth[:, None])).reshape(w.shape)
    if method == "nm":
        n, m = int(claim.param("n") or 0), int(claim.param("m") or 0)
        if w.shape[-1] % m:
            return f"last axis {w.shape[-1]} is not a multiple of M={m}"
        g_a = a.reshape(-1, m)
        g_p = pruned.reshape(-1, m)
        g_z = (w.reshape(-1, m) == 0) | g_p
        too_dense = (m - g_z.sum(axis=1)) > n
        stats["groups_too_dense"] = int(too_dense.sum())
        kept_min = np.where(~g_z, g_a, np.inf).min(axis=1)
        bad = g_p & (g_a > kept_min[:, None])
        bad |= too_dense[:, None] & ~g_z
        return bad.reshape(w.shape)
    if method == "channel":
        rows = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(-1, 1)
        p = pruned.reshape(rows.shape)
        zero_rows = (
            (np.asarray(rows) == 0).all(axis=1)
            | p.all(axis=1)
            | (p | (np.asarray(rows) == 0)).all(axis=1)
        )
        partial = p.any(axis=1) & ~zero_rows
        stats["channels_pruned"] = int((p.any(axis=1) & zero_rows).sum())
        if partial.any():
            return np.broadcast_to(partial[:, None], rows.shape).copy().reshape(w.shape) & pruned
        pr = p.any(axis=1)
        # Channels already dead in the trusted model are neither pruned nor kept.
        live = (np.asarray(rows) != 0).any(axis=1)
        bad_any = np.zeros(rows.shape[0], bool)
        for order in (1, 2):
            norm = np.linalg.norm(rows.astype(np.float64), ord=order, axis=1)
            keep_min = norm[~pr & live].min(initial=np.inf)
            bad_o = pr & (norm > keep_min)
            if not bad_o.any():
                stats["channel_norm"] = f"L{order}"
                return np.zeros(w.shape, bool)
            bad_any = bad_o if not bad_any.any() else bad_any & bad_o
        return (np.broadcast_to(bad_any[:, None], rows.shape) & p).reshape(w.shape)
    return f"method {method} has no criterion"


def _kth_smallest(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row, the k-th smallest value (k >= 1), or -inf where k == 0."""
    out = np.full(a.shape[0], -np.inf)
    for i in range(a.shape[0]):
        if k[i] > 0:
            out[i] = np.partition(a[i], int(k[i]) - 1)[int(k[i]) - 1]
    return out
