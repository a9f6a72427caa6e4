"""Exact zeros and prune candidates.

Pruning (magnitude, N:M, structured) writes exact zeros on the weights a pruning score
ranks lowest and leaves every other value untouched (SparseGPT also updates kept
weights). Two look-alikes must not pass as pruning: zeros planted on important weights,
and DARE / TIES merges (random drops plus a rescale of what is kept). And one attack
hides in the candidates (Tian et al. 2022; Egashira et al. 2025): the deployed model is
not pruned, but its change sits on the weights pruning would remove and cancels the
change on kept weights, so the malicious behaviour only wakes up after pruning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanner.analysis.lowrank import randomized_svd
from scanner.analysis.tensors import TensorPair

CANDIDATE_SHARE = 0.9
"""Share of new zeros that must sit on prune candidates to call the change pruning."""
QUANTILES = (0.2, 0.3, 0.4, 0.5)
"""Prune ratios tried when looking for a change concentrated on candidates."""


@dataclass(frozen=True)
class PruneResult:
    kind: str
    """``magnitude``, ``N:M``, ``structured``, ``pruning with update``, ``zeros on
    non-candidates``, ``drop-and-rescale`` or ``prune-activated``."""
    benign: bool
    evidence: dict[str, object]


def _candidate_share(absw: np.ndarray, zeroed: np.ndarray, sparsity: float) -> float:
    """Share of ``zeroed`` elements whose magnitude is within the smallest ``sparsity``
    (with 25% slack), per tensor and per row (whichever the pruner used)."""
    q = min(1.0, sparsity * 1.25 + 1e-9)
    flat_thr = np.quantile(absw, q)
    tensor_share = float(np.mean(absw[zeroed] <= flat_thr))
    row_thr = np.quantile(absw, q, axis=1, keepdims=True)
    row_share = float(np.mean((absw <= row_thr)[zeroed]))
    return max(tensor_share, row_share)


def _nm_pattern(pair: TensorPair, zeroed: np.ndarray) -> tuple[int, int] | None:
    """``(N, M)`` when every group of M consecutive weights (memory order) has at least N
    zeros and the new zeros are the smallest of their group."""
    flat_d = pair.deployed.reshape(-1)
    flat_t = np.abs(pair.trusted.reshape(-1))
    flat_z = zeroed.reshape(-1)
    for m in (4, 8, 2, 16):
        if flat_d.size % m:
            continue
        zeros = (flat_d == 0).reshape(-1, m).sum(axis=1)
        for n in range(m // 2, 0, -1):
            if np.mean(zeros >= n) < 0.99:
                continue
            groups = flat_t.reshape(-1, m)
            kth = np.sort(groups, axis=1)[:, n - 1 : n]
            smallest = (groups <= kth).reshape(-1)
            if np.mean(smallest[flat_z]) >= CANDIDATE_SHARE:
                return n, m
            break
    return None


def analyze_zeros(pair: TensorPair) -> PruneResult | None:
    """Classify a change that writes new exact zeros; None when it writes none."""
    a, b = pair.trusted, pair.deployed
    changed = pair.changed
    zeroed = changed & (b == 0) & (a != 0)
    n_zeroed = int(zeroed.sum())
    n_changed = int(changed.sum())
    if n_zeroed == 0:
        return None
    size = a.size
    a2 = a.reshape(a.shape[0], -1)
    z2 = zeroed.reshape(a.shape[0], -1)
    absw = np.abs(a2)
    other = changed & ~zeroed
    kept = (b != 0) & ~changed
    evidence: dict[str, object] = {
        "new_zeros": n_zeroed,
        "new_zero_fraction": round(n_zeroed / size, 6),
        "other_changes": int(other.sum()),
    }
    # Drop-and-rescale (DARE on weights): every survivor scaled by one factor 1/(1-p).
    nz = other & (a != 0)
    if int(nz.sum()) >= 0.5 * (size - n_zeroed) and n_zeroed >= 0.05 * size:
        ratio = b[nz].astype(np.float64) / a[nz]
        scale = float(np.median(ratio))
        if np.mean(np.abs(ratio - scale) <= 1e-2 * abs(scale)) >= 0.99:
            evidence.update(scale=round(scale, 6), implied_drop=round(1 - 1 / scale, 4))
            return PruneResult("drop-and-rescale", True, evidence)
    existing = float(np.mean(a == 0))
    sparsity = existing + n_zeroed / size
    share = _candidate_share(absw, z2, sparsity)
    evidence["candidate_share"] = round(share, 4)
    row_zero = np.all(b.reshape(b.shape[0], -1) == 0, axis=1) & np.any(z2, axis=1)
    col_zero = np.all(b == 0, axis=(0, 2)) & np.any(zeroed, axis=(0, 2))
    in_structured = z2[row_zero].sum() + zeroed[:, col_zero].sum()
    if n_zeroed >= 0.95 * n_changed:
        nm = _nm_pattern(pair, zeroed)
        if nm is not None:
            evidence.update(pattern=f"{nm[0]}:{nm[1]}")
            return PruneResult("N:M", True, evidence)
        if share >= CANDIDATE_SHARE and n_zeroed >= 0.001 * size:
            return PruneResult("magnitude", True, evidence)
        if in_structured >= 0.95 * n_zeroed:
            evidence.update(
                rows=[pair.row_index(i) for i in np.flatnonzero(row_zero)[:64]],
                cols=[int(i) for i in np.flatnonzero(col_zero)[:64]],
            )
            return PruneResult("structured", True, evidence)
        return PruneResult("zeros on non-candidates", False, evidence)
    if n_zeroed >= 0.05 * size and share >= CANDIDATE_SHARE:
        return PruneResult("pruning with update", True, evidence)
    del kept
    return None


def analyze_prune_activated(pair: TensorPair) -> PruneResult | None:
    """A dense change concentrated on prune candidates that opposes the change on the
    weights pruning keeps; None otherwise."""
    a = pair.trusted.reshape(pair.trusted.shape[0], -1)
    b = pair.deployed.reshape(a.shape)
    if min(a.shape) < 4 or a.size < 256:
        return None
    d = b.astype(np.float64) - a
    energy = float(np.vdot(d, d))
    if energy == 0:
        return None
    if float(np.mean(pair.changed)) < 0.02:
        return None
    absw = np.abs(a).reshape(-1)
    # One sort by magnitude gives the delta energy on the smallest q for every q.
    order = np.argsort(absw, kind="stable")
    cum = np.cumsum(np.square(d.reshape(-1)[order]))
    best: tuple[float, float] | None = None
    for q in QUANTILES:
        share = float(cum[int(q * absw.size) - 1]) / energy
        if share >= q + 0.6 * (1 - q) and (best is None or share - q > best[1] - best[0]):
            best = (q, share)
    if best is None:
        return None
    q, share = best
    cand = np.zeros(absw.size, dtype=bool)
    cand[order[: int(q * absw.size)]] = True
    cand = cand.reshape(a.shape)
    d_kept = np.where(cand, 0.0, d)
    d_cand = np.where(cand, d, 0.0)
    if not np.any(d_kept):
        return None
    # Opposition: along the kept change's main direction, the candidates' change acts
    # the other way (for a fine-tune both parts point the same way or are unrelated).
    u, s, vt = randomized_svd(np.zeros_like(d_kept), d_kept, 1, seed=1)
    along = float(u[:, 0] @ d_cand @ vt[0])
    opposition = -along / float(s[0]) if s[0] > 0 else 0.0
    evidence: dict[str, object] = {
        "prune_ratio": q,
        "energy_share_on_candidates": round(share, 4),
        "opposition": round(opposition, 4),
    }
    if opposition < 0.2:
        return None
    return PruneResult("prune-activated", False, evidence)
