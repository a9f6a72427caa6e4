"""Fit one changed tensor: storage noise, outlier regions, and what is left.

A tensor's change passes only when something explains all of it. This module splits the
change into (1) storage noise (every changed element within the dtype bound), (2)
outlier regions (rows, columns, blocks, elements far outside the rest of the change:
:mod:`scanner.analysis.outliers`) and (3) the remainder, which is either nothing beyond
storage noise, a diffuse change (every row and column moves: a training update, whose
rank structure :mod:`scanner.analysis.lowrank` measures) or a confined one (a few rows,
columns or scattered elements moved with the rest untouched: an edit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanner.analysis.lowrank import RankProfile, rank_profile
from scanner.analysis.noise import (
    NoiseResult,
    beyond_noise,
    integer_storage,
    noise_bound,
    storage_noise,
)
from scanner.analysis.outliers import OutlierProfile, Thresholds, matrix_view, outlier_profile
from scanner.analysis.tensors import TensorPair

DIFFUSE_CHANGED = 0.05
"""A diffuse change moves at least this share of the tensor's elements ..."""
DIFFUSE_COVER = 0.5
"""... in at least this share of its rows and of its columns (training updates every
row and column of a weight it touches; storage precision may leave some unchanged)."""
MIN_RANK_SIDE = 8
"""Below this many rows or columns a rank says nothing (a 2 x 384 table is rank <= 2)."""
RANK_SNR = 8.0
"""A low rank is certified only when the change's energy is at least this many times
the rounding noise energy: the rank test leaves up to half a rounding's energy
unexplained, which near the noise floor hides the tail of a full-rank update."""
RANK_GAP = 1.5
"""... and only with a gap in the spectrum: the rank-th singular value at least this many
times the next (an adapter's few directions stand above the noise; a training update's
spectrum decays smoothly, and a rank read off it is only where the test ran out of
noise) ..."""
RANK_SHARE = 0.25
"""... and only up to this share of the smaller side (rank 22 of a 64-row matrix is the
decaying spectrum of a training update, not an adapter)."""


@dataclass(frozen=True, eq=False)
class TensorFit:
    name: str
    noise: NoiseResult
    outliers: OutlierProfile | None
    remainder: str
    """``none`` (nothing beyond storage noise once outliers are removed), ``diffuse`` or
    ``confined``."""
    rank: RankProfile | None
    """Rank structure of a diffuse remainder of a matrix."""
    confined_rows: tuple[int, ...] = ()
    confined_cols: tuple[int, ...] = ()
    beyond: int = 0
    """Elements of the remainder beyond storage noise."""
    changed_fraction: float = 0.0
    subresolution: bool = False
    """Every change is within the storage bound at the tensor's typical magnitude."""

    @property
    def low_rank(self) -> bool:
        """The remainder is certifiably low rank (see ``RANK_SNR``, ``RANK_SHARE``)."""
        r = self.rank
        if r is None or r.status != "low-rank" or r.rank is None:
            return False
        side = min(self.outliers.matrix) if self.outliers is not None else r.rank
        s = r.sigmas
        if r.rank >= len(s):
            return False  # no singular value beyond it was measured: no gap to see
        gap = s[r.rank - 1] / s[r.rank] if s[r.rank] > 0 else float("inf")
        return r.snr >= RANK_SNR and gap >= RANK_GAP and r.rank <= max(1, RANK_SHARE * side)

    def evidence(self) -> dict[str, object]:
        out: dict[str, object] = {
            "remainder": self.remainder,
            "fraction_changed": round(self.changed_fraction, 4),
            **({"below_resolution": True} if self.subresolution else {}),
            **self.noise.evidence(),
        }
        if self.outliers is not None and self.outliers.found:
            out.update(self.outliers.evidence())
        if self.rank is not None:
            out.update(self.rank.summary())
        if self.remainder == "confined":
            out.update(
                confined_rows=list(self.confined_rows[:64]),
                confined_cols=list(self.confined_cols[:64]),
                elements_beyond_noise=self.beyond,
            )
        return out


def fit_tensor(pair: TensorPair, limits: Thresholds | None = None) -> TensorFit:
    a, b = matrix_view(pair)
    changed = pair.changed.reshape(a.shape)
    frac = float(np.mean(changed))
    noise = storage_noise(a, b, changed, pair.dtype)
    if noise.within:
        return TensorFit(pair.name, noise, None, "none", None, changed_fraction=frac)
    if _below_resolution(a, b, changed, pair.dtype):
        return TensorFit(
            pair.name, noise, None, "diffuse", None, changed_fraction=frac, subresolution=True
        )
    prof = outlier_profile(pair, limits)
    mask = prof.mask
    # an unchanged element is never beyond noise: test only the changed ones
    at = np.flatnonzero(changed & ~mask)
    beyond = np.zeros(a.shape, dtype=bool)
    beyond.reshape(-1)[at] = beyond_noise(a.reshape(-1)[at], b.reshape(-1)[at], pair.dtype)
    n_beyond = int(beyond.sum())
    if n_beyond == 0:
        return TensorFit(pair.name, noise, prof, "none", None, changed_fraction=frac)
    m, n = a.shape
    rest = changed & ~mask
    row_cover = float(np.mean(rest.any(axis=1))) if n > 1 else 1.0
    col_cover = float(np.mean(rest.any(axis=0))) if m > 1 else 1.0
    diffuse = (
        float(np.mean(rest)) >= DIFFUSE_CHANGED
        and (m < MIN_RANK_SIDE or row_cover >= DIFFUSE_COVER)
        and (n < MIN_RANK_SIDE or col_cover >= DIFFUSE_COVER)
    )
    if not diffuse:
        rows = tuple(pair.row_index(i) for i in np.flatnonzero(beyond.any(axis=1)))
        cols = tuple(int(j) for j in np.flatnonzero(beyond.any(axis=0)))
        return TensorFit(pair.name, noise, prof, "confined", None, rows, cols, n_beyond, frac)
    rank = None
    if min(m, n) >= MIN_RANK_SIDE:
        kept = np.where(mask, a, b) if prof.found else b
        rank = rank_profile(a, kept, pair.dtype)
    return TensorFit(
        pair.name, noise, prof, "diffuse", rank, beyond=n_beyond, changed_fraction=frac
    )


def _below_resolution(a: np.ndarray, b: np.ndarray, changed: np.ndarray, dtype: str) -> bool:
    """A sparse change whose every element is within the storage bound at the tensor's
    typical (median) magnitude: what a small diffuse update leaves after narrow storage,
    where it crosses a rounding step only at weights much smaller than typical. Not
    rounding noise (the elements moved beyond their own bound), but too small to be an
    edit: it counts as part of a diffuse update."""
    if float(np.mean(changed)) >= DIFFUSE_CHANGED or integer_storage(dtype):
        # integer codes have one step at every magnitude: nothing is below it
        return False
    d = np.abs(b[changed].astype(np.float64) - a[changed])
    if not d.size:
        return False
    # The bound grows with the magnitude: one beyond the bound at the largest weight is
    # beyond it at the median too, and needs no pass over the whole tensor.
    largest = np.full(1, max(float(np.max(a)), -float(np.min(a))))
    if float(d.max()) > float(noise_bound(largest, largest, dtype)[0]):
        return False
    typical = np.full(1, float(np.median(np.abs(a))))
    bound = float(noise_bound(typical, typical, dtype)[0])
    return float(d.max()) <= bound
