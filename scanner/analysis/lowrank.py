"""Rank structure of a weight delta, measured against storage rounding noise.

A LoRA merge adds ``B @ A`` (rank <= r); a ROME edit adds one outer product; abliteration
subtracts ``r r^T W`` (rank 1, the same ``r`` in every tensor); a full fine-tune changes
every direction. After storage the delta also carries rounding noise of the deployed
dtype, about ``ulp / sqrt(12)`` per element (twice that variance when both sides were
rounded from a wider original), plus the rounding of the update itself, which a merge
casts to the storage dtype before adding it (:func:`merge_noise`). The rank is the
smallest ``r`` whose best rank-``r`` fit leaves a residual no larger than that noise,
measured element by element in ulps, so the test is scale-free; the residual is summed
directly wherever ``energy - sum(sigma^2)`` cannot resolve it in float64. A delta whose
energy is within a few times the noise is "indeterminate": no rank claim is made.

Cost: randomized SVD (Halko, Martinsson, Tropp 2011) with a few power iterations, i.e. a
handful of products of the ``m x n`` delta with ``n x (k + oversample)`` blocks, streamed
in float64 row chunks; huge matrices are first sampled down to at most ``MAX_DIM`` rows
and columns (a sample of a rank-``r`` matrix has rank <= ``r``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from scanner.diff.compare import ulp

K_MAX = 24
"""Largest rank reported as "low"; beyond it the delta counts as full rank."""
OVERSAMPLE = 10
POWER_ITERATIONS = 2
MAX_DIM = 4096
CHUNK_ROWS = 512
INDETERMINATE_SNR = 4.0
"""Delta energy below this multiple of the single-rounding noise energy: indeterminate."""
NOISE_RESIDUAL = 2.5
"""Residual energy, in units of a merge's rounding energy (:func:`merge_noise`), accepted
as storage noise (one rounding leaves about 1, a rounding on each side about 2)."""


@dataclass(frozen=True, eq=False)
class RankProfile:
    status: str
    """``indeterminate``, ``low-rank`` or ``full-rank``."""
    rank: int | None
    energy: float
    noise: float
    """Expected energy of one rounding of the deployed values (sum of ulp^2 / 12)."""
    sigmas: tuple[float, ...]
    top_share: float
    """Share of the delta's energy in the top singular direction."""
    residual: float
    """Residual energy after the rank-``rank`` fit (or the largest fit tried), in units of
    the rounding energy a merge of that rank carries (:func:`merge_noise`)."""
    left: np.ndarray | None
    right: np.ndarray | None
    """Top singular vectors (unit); None when the matrix was sampled."""
    sampled: bool

    @property
    def snr(self) -> float:
        return self.energy / self.noise if self.noise > 0 else float("inf")

    def summary(self) -> dict[str, object]:
        return {
            "rank_status": self.status,
            "rank": self.rank,
            "snr": round(min(self.snr, 1e12), 3),
            "top_share": round(self.top_share, 4),
            "residual_over_noise": round(min(self.residual, 1e12), 4),
            "sigmas": [float(f"{s:.4g}") for s in self.sigmas[:8]],
        }


def _orth(y: np.ndarray) -> np.ndarray:
    """Orthonormal basis of ``y``'s columns by CholeskyQR2: two Gram-Cholesky passes cost
    a few small matmuls, much less than Householder QR of a tall matrix."""
    q = y
    try:
        for _ in range(2):
            chol = np.linalg.cholesky(q.T @ q)
            q = np.linalg.solve(chol, q.T).T
    except np.linalg.LinAlgError:  # rank-deficient block: fall back to Householder
        q, _ = np.linalg.qr(y)
    return q


def randomized_svd(
    a: np.ndarray, b: np.ndarray, k: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` SVD of ``b - a`` (2-D float arrays) without forming a dense SVD.

    The delta is formed in float64 one row chunk at a time for every product.
    """
    m, n = a.shape
    width = min(k + OVERSAMPLE, m, n)
    rng = np.random.default_rng(seed)

    def rows() -> Iterator[tuple[int, np.ndarray]]:
        for r0 in range(0, m, CHUNK_ROWS):
            yield r0, b[r0 : r0 + CHUNK_ROWS].astype(np.float64) - a[r0 : r0 + CHUNK_ROWS]

    def times(x: np.ndarray) -> np.ndarray:  # D @ x
        out = np.empty((m, x.shape[1]))
        for r0, d in rows():
            out[r0 : r0 + d.shape[0]] = d @ x
        return out

    def t_times(y: np.ndarray) -> np.ndarray:  # D.T @ y
        out = np.zeros((n, y.shape[1]))
        for r0, d in rows():
            out += d.T @ y[r0 : r0 + d.shape[0]]
        return out

    q = _orth(times(rng.standard_normal((n, width))))
    for _ in range(POWER_ITERATIONS):
        q = _orth(times(_orth(t_times(q))))
    small = t_times(q).T  # (width, n) = Q^T D
    # SVD of the small factor through its Gram matrix (width x width).
    evals, u_s = np.linalg.eigh(small @ small.T)
    order = np.argsort(evals)[::-1]
    s = np.sqrt(np.maximum(evals[order], 0.0))
    u_s = u_s[:, order]
    vt = (u_s.T @ small) / np.where(s > 0, s, 1.0)[:, None]
    return q @ u_s, s, vt


def _sample(x: np.ndarray, limit: int, axis: int) -> np.ndarray:
    size = x.shape[axis]
    if size <= limit:
        return x
    idx = np.linspace(0, size - 1, limit).astype(np.int64)
    return np.take(x, idx, axis=axis)


def noise_energy(values: np.ndarray, dtype: str) -> float:
    """Expected energy of one round-to-nearest of ``values`` to ``dtype``: sum ulp^2 / 12."""
    x = np.abs(values.astype(np.float32, copy=False))
    if dtype in ("F32", "BF16"):
        # Same exponent range as float32: the ulp is float32's spacing shifted by the
        # mantissa difference (np.spacing is much cheaper than a log2 per element).
        u = np.spacing(x).astype(np.float64) * (2.0 ** (23 - (7 if dtype == "BF16" else 23)))
    elif dtype in ("F16", "F64") or dtype.startswith("F8"):
        u = ulp(x, dtype if dtype != "F64" else "F32")
    else:  # integer storage: one unit
        u = np.ones(x.shape)
    return float(np.vdot(u, u)) / 12.0


def merge_noise(deployed_noise: float, update_noise: float, rank: int, dtype: str) -> float:
    """Rounding energy a rank-``rank`` update merged in storage ``dtype`` carries beyond
    its low-rank part: one rounding of the sum (``deployed_noise``) and one of the update
    itself, which is cast to the storage dtype before it is added (``update_noise``, one
    rounding of the delta). Stored in float32 or wider, the update was also computed at
    the storage's own precision, and each of the ``rank`` partial sums of ``B @ A`` (and
    the scaling) rounds once more at the update's magnitude; narrower storage computes in
    float32, far below its own step."""
    computed_at_storage_precision = dtype in ("F32", "F64")
    return deployed_noise + update_noise * (1 + (rank if computed_at_storage_precision else 0))


_SUBTRACTION_ERROR = 2.0**-40
"""Bound, relative to the delta's energy, on the float64 error of ``energy - sum(sigma^2)``
(sigmas from a Gram eigendecomposition; float64's epsilon is 2**-52)."""


def _residual_beyond(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """Energy of ``b - a`` outside the span of the rows of ``directions``, summed element
    by element in float64 row chunks."""
    basis, _ = np.linalg.qr(directions.T)
    total = 0.0
    for r0 in range(0, a.shape[0], CHUNK_ROWS):
        d = b[r0 : r0 + CHUNK_ROWS].astype(np.float64) - a[r0 : r0 + CHUNK_ROWS]
        rest = d - (d @ basis) @ basis.T
        total += float(np.vdot(rest, rest))
    return total


def rank_profile(
    trusted: np.ndarray, deployed: np.ndarray, dtype: str, seed: int = 0
) -> RankProfile:
    """Rank structure of ``deployed - trusted`` (2-D float32 views) for storage ``dtype``."""
    a = _sample(_sample(trusted, MAX_DIM, 0), MAX_DIM, 1)
    b = _sample(_sample(deployed, MAX_DIM, 0), MAX_DIM, 1)
    sampled = a.shape != trusted.shape
    m, n = a.shape
    energy = 0.0
    update_noise = 0.0
    for r0 in range(0, m, CHUNK_ROWS):
        d = b[r0 : r0 + CHUNK_ROWS].astype(np.float64) - a[r0 : r0 + CHUNK_ROWS]
        energy += float(np.vdot(d, d))
        update_noise += noise_energy(d, dtype)
    noise = noise_energy(b, dtype)
    if energy <= INDETERMINATE_SNR * noise or min(m, n) < 2:
        return RankProfile(
            "indeterminate",
            None,
            energy,
            noise,
            (),
            0.0,
            energy / max(noise, 1e-300),
            None,
            None,
            sampled,
        )
    k = min(K_MAX, min(m, n))
    u_vec, s, vt = randomized_svd(a, b, k, seed)
    s = s[:k]
    top_share = float(s[0] ** 2 / energy)
    # Residual energy after projecting on the top-r directions found; a suboptimal
    # subspace only makes it larger, so the rank claim errs towards "more".
    residuals = np.maximum(energy - np.cumsum(s**2), 0.0)
    # ``energy - sum(sigma^2)`` carries float64 rounding of the whole energy; a float32
    # delta can stand ~1e15 times above its storage noise, where that rounding is larger
    # than the noise itself. Within that margin the residual is measured directly.
    margin = _SUBTRACTION_ERROR * energy
    limit = min(k, max(1, min(m, n) // 2))
    rank: int | None = None
    allowed = noise
    for r in range(1, limit + 1):
        allowed = merge_noise(noise, update_noise, r, dtype)
        if residuals[r - 1] - margin > NOISE_RESIDUAL * allowed:
            continue
        if residuals[r - 1] + margin > NOISE_RESIDUAL * allowed:
            residuals[r - 1] = _residual_beyond(a, b, vt[:r])
        if residuals[r - 1] <= NOISE_RESIDUAL * allowed:
            rank = r
            break
    residual = residuals[(rank or limit) - 1] / allowed if allowed > 0 else float("inf")
    return RankProfile(
        "low-rank" if rank is not None else "full-rank",
        rank,
        energy,
        noise,
        tuple(float(x) for x in s),
        top_share,
        float(residual),
        None if sampled else u_vec[:, 0].copy(),
        None if sampled else vt[0].copy(),
        sampled,
    )
