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

from scanner.analysis.tensors import TensorPair

CANDIDATE_SHARE = 0.9
"""Share of new zeros that must sit on prune candidates to call the change pruning."""


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


GRID = (0.1, 0.3, 0.5, 0.7, 0.9)
"""Prune ratios always tried on the deployed magnitudes (what a user prunes), besides
the change points of the energy curve of every ranking."""
MIN_RATIO = 0.02
MAX_RATIO = 0.98
"""Prune ratios outside this range leave too few candidates or too few kept weights."""
MIN_OPPOSITION = 0.2
"""Share of the kept change's main component that the candidates' change cancels."""
MIN_Z = 8.0
"""Significance of that cancellation against an unstructured change of the same size on
the candidates (a normal z-score; tested a few dozen times per tensor)."""
NM_GROUPS = ((2, 4), (4, 8))
"""Semi-structured (N:M) patterns whose candidates are tried."""
POWER_STEPS = 12
WARM_STEPS = 3


def _change_points(cum: np.ndarray, energy: float) -> list[float]:
    """Prune ratios where the change's energy per weight steps up or down along a
    magnitude ranking: the extremes of (energy share on the i smallest) - (i / n). A
    change whose size depends on the prune boundary bends the curve there; one that is
    blind to magnitude follows the diagonal."""
    n = cum.size
    q = np.arange(1, n + 1) / n
    gap = cum / energy - q
    inside = (q >= MIN_RATIO) & (q <= MAX_RATIO)
    if not np.any(inside):
        return []
    hi = int(np.argmax(np.where(inside, gap, -np.inf)))
    lo = int(np.argmin(np.where(inside, gap, np.inf)))
    return sorted({float(q[hi]), float(q[lo])})


def _top_pair(
    d: np.ndarray, v: np.ndarray | None, steps: int
) -> tuple[np.ndarray, float, np.ndarray]:
    """Top singular triple of ``d`` by power iteration from ``v`` (a fixed start when
    None; candidate sets of nearby ratios share most of their kept change, so the
    previous direction is a warm start that converges in a few steps)."""
    if v is None:
        # Fixed, sign-alternating start: deterministic, and not orthogonal to a smooth
        # or a sign-structured top vector.
        v = np.linspace(1.0, 2.0, d.shape[1]) * np.where(np.arange(d.shape[1]) % 2, 1.0, -1.0)
        v = v.astype(d.dtype)
        v /= np.linalg.norm(v)
    u = np.zeros(d.shape[0], dtype=d.dtype)
    s = 0.0
    # einsum, not BLAS gemv: multi-threaded gemv stalls on a busy machine, and these
    # products are small.
    for _ in range(steps):
        u = np.einsum("ij,j->i", d, v)
        s_u = float(np.linalg.norm(u))
        if s_u == 0:
            return u, 0.0, v
        u /= s_u
        v = np.einsum("ij,i->j", d, u)
        s = float(np.linalg.norm(v))
        v /= s
    return u, s, v


def _ascending(mag: np.ndarray, axis: int) -> np.ndarray:
    """``np.argsort(mag, axis, kind="stable")`` of magnitudes (float32, >= 0): their bit
    patterns order like their values, so (bits, position) keys are all distinct and any
    sort of them gives the stable order, several times faster than a stable sort.
    Ties go to the lower position, so masks do not depend on the sort algorithm.

    A whole tensor's ranking takes two stable passes over the 16-bit halves of the bit
    patterns, low half first: numpy sorts 16-bit keys by radix, in linear time."""
    if mag.ndim == 1:
        u = np.ascontiguousarray(mag, dtype=np.float32).view(np.uint32)
        by_low = np.argsort(u.astype(np.uint16), kind="stable")  # the low 16 bits
        high = (u >> np.uint32(16)).astype(np.uint16)[by_low]
        return by_low[np.argsort(high, kind="stable")]
    bits = np.ascontiguousarray(mag, dtype=np.float32).view(np.uint32).astype(np.uint64)
    shape = [1] * mag.ndim
    shape[axis] = mag.shape[axis]
    position = np.arange(mag.shape[axis], dtype=np.uint64).reshape(shape)
    keys = (bits << np.uint64(32)) | position
    keys.sort(axis=axis)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)


def _candidate_masks(mag: np.ndarray, e: np.ndarray, energy: float, grid: bool):
    """(rule, ratio, mask) for every pruning rule: per tensor and per row at the energy
    curve's change points (and on ``GRID`` when ``grid``), and N:M groups."""
    flat = mag.reshape(-1)
    order = _ascending(flat, 0)
    qs = set(_change_points(np.cumsum(e.reshape(-1)[order]), energy))
    for q in sorted(qs | (set(GRID) if grid else set())):
        mask = np.zeros(flat.size, dtype=bool)
        mask[order[: round(q * flat.size)]] = True
        yield "tensor", q, mask.reshape(mag.shape)
    # Per row (per-output pruning, Wanda-style): rank within each row.
    rank = _ascending(mag, 1)
    col_cum = np.cumsum(np.take_along_axis(e, rank, axis=1).sum(axis=0))
    for q in _change_points(col_cum, energy):
        k = round(q * mag.shape[1])
        mask = np.zeros(mag.shape, dtype=bool)
        np.put_along_axis(mask, rank[:, :k], True, axis=1)
        yield "row", q, mask
    for n, m in NM_GROUPS:
        if mag.shape[1] % m or mag.shape[1] < 2 * m:
            continue
        g = mag.reshape(mag.shape[0], -1, m)
        mask = np.zeros(g.shape, dtype=bool)
        np.put_along_axis(mask, _ascending(g, 2)[:, :, :n], True, axis=2)
        yield f"{n}:{m}", n / m, mask.reshape(mag.shape)


def analyze_prune_activated(pair: TensorPair) -> PruneResult | None:
    """A dense change on prune candidates that cancels the change on the weights pruning
    keeps; None otherwise.

    Candidates are ranked by the magnitudes pruning would see: the deployed ones (what a
    user prunes) and the trusted ones, per tensor, per row and in N:M groups, at every
    ratio where the change's size steps along the ranking and on a grid of ratios (no
    fixed list of sparsities). The evidence is the cancellation itself: along the kept
    change's main direction, the candidates' change points the other way, far beyond
    what an unstructured change of its size does."""
    a = pair.trusted.reshape(pair.trusted.shape[0], -1)
    b = pair.deployed.reshape(a.shape)
    if min(a.shape) < 4 or a.size < 256:
        return None
    if float(np.mean(pair.changed)) < 0.02:
        return None
    # float32 keeps the many products cheap; the statistics need no more precision.
    d = (b.astype(np.float64) - a).astype(np.float32)
    e = np.square(d, dtype=np.float64)
    energy = float(e.sum())
    if energy == 0:
        return None
    best: tuple[float, float, str, str, float, float] | None = None
    v: np.ndarray | None = None
    for side, mag in (("deployed", np.abs(b)), ("trusted", np.abs(a))):
        for rule, q, cand in _candidate_masks(mag, e, energy, grid=side == "deployed"):
            # Masks by multiplication: several times faster than ``np.where`` on a
            # scattered mask, and the signed zeros it leaves add nothing to any sum.
            d_kept = d * ~cand
            u, s, v = _top_pair(d_kept, v, POWER_STEPS if v is None else WARM_STEPS)
            if s == 0:
                v = None
                continue
            d_cand = d * cand
            along = float(np.einsum("i,ij,j->", u, d_cand, v))
            sd = float(np.sqrt(np.einsum("i,ij,j->", u * u, d_cand * d_cand, v * v)))
            opposition = -along / s
            z = -along / sd if sd > 0 else 0.0
            if opposition >= MIN_OPPOSITION and z >= MIN_Z and (best is None or z > best[1]):
                share = float(np.where(cand, e, 0.0).sum()) / energy
                best = (opposition, z, side, rule, q, share)
    if best is None:
        return None
    opposition, z, side, rule, q, share = best
    evidence: dict[str, object] = {
        "prune_ratio": round(q, 4),
        "prune_rule": rule,
        "ranked_by": f"{side} magnitude",
        "energy_share_on_candidates": round(share, 4),
        "opposition": round(opposition, 4),
        "z": round(z, 1),
    }
    return PruneResult("prune-activated", False, evidence)
