"""The merge methods, re-derived in float64 with a per-element rounding bound.

Each function returns candidate results: ``(expected, bound)`` pairs of float64 arrays.
A deployed element follows from the merge when it is within ``bound`` of ``expected``
for at least one candidate. Several candidates exist only where the method's own float
arithmetic could decide a discrete choice either way (an element exactly at the
sparsification threshold, a sign majority that cancels to within rounding, a SLERP
dot product on the collinearity threshold).

The bound is the error of the method's arithmetic in its compute dtype: ``k * eps *
S``, where ``S`` is the sum of the magnitudes of the terms that make up the element
(for ``n`` terms a floating-point sum is within ``n * eps * S`` of the exact sum), plus
the final rounding to the stored dtype. It is a few units of rounding of the values
involved, so any change larger than the merge's own arithmetic could produce fails.

Semantics follow mergekit (``merge_methods/linear``, ``slerp``,
``generalized_task_arithmetic`` and ``sparsify``): a linear merge is ``sum w_i x_i``
(divided by ``sum w_i`` when normalized); task arithmetic adds ``lambda * sum w_i
d_i`` (``d_i = x_i - base``, divided by ``sum w_i`` when normalized); TIES keeps the
``max(1, int(density * n))`` largest ``|d_i|`` of each tensor, then for each element
only the deltas whose sign agrees with the sign of their weighted sum (normalized by
the weights of those deltas); DARE drops each delta element with probability ``1 -
density`` and rescales the kept ones by ``L1(d) / L1(kept d)``; SLERP interpolates
each tensor on the great circle between the two flattened tensors, falling back to
linear interpolation when they are nearly collinear (``|cos| > 0.9995``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS = {"F64": 2.0**-53, "F32": 2.0**-24, "BF16": 2.0**-8, "F16": 2.0**-11}
"""Unit roundoff of each float dtype."""
TINY = {"F64": 2.0**-1074, "F32": 2.0**-149, "BF16": 2.0**-133, "F16": 2.0**-24}
"""Smallest subnormal: the rounding bound of values near zero."""
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = 1e-8
RESCALE_EPS = 1e-7


@dataclass(frozen=True)
class Candidate:
    expected: np.ndarray
    bound: np.ndarray


@dataclass(frozen=True)
class Rounding:
    """Where a method's arithmetic rounds: its compute dtype and the stored one."""

    compute: str
    stored: str

    def bound(self, magnitude: np.ndarray, expected: np.ndarray, terms: int) -> np.ndarray:
        eps_c = EPS.get(self.compute, EPS["F32"])
        eps_o = EPS.get(self.stored, EPS["F32"])
        tiny = TINY.get(self.stored, TINY["F32"])
        # Each of the ``terms`` operations rounds once in the compute dtype, then the
        # result is rounded to the compute dtype and to the stored one.
        return (terms + 2) * eps_c * magnitude + 2 * max(eps_o, eps_c) * np.abs(expected) + tiny


def linear(
    xs: Sequence[np.ndarray], weights: Sequence[float], normalize: bool, r: Rounding
) -> list[Candidate]:
    w = np.asarray(weights, dtype=np.float64)
    acc = np.zeros_like(xs[0])
    mag = np.zeros_like(xs[0])
    for x, wi in zip(xs, w, strict=True):
        acc += wi * x
        mag += abs(wi) * np.abs(x)
    if normalize:
        div = float(w.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            acc /= div
            mag /= abs(div)
    return [Candidate(acc, r.bound(mag, acc, len(xs) + 2))]


def slerp(base: np.ndarray, other: np.ndarray, t: float, r: Rounding) -> list[Candidate]:
    a = base.reshape(-1)
    b = other.reshape(-1)
    na = float(np.linalg.norm(a))
    nb = float(np.linalg.norm(b))
    na = na if na > SLERP_EPS else 1.0
    nb = nb if nb > SLERP_EPS else 1.0
    dot = float(np.clip(np.dot(a / na, b / nb), -1.0, 1.0)) if a.size else 1.0
    # The dot product is computed in float32 over the whole tensor: near the threshold
    # either branch may have been taken.
    slack = 1e-5 if r.compute != "F64" else 1e-12
    branches = []
    if abs(dot) > SLERP_DOT_THRESHOLD - slack:
        branches.append((1.0 - t, t))
    if abs(dot) <= SLERP_DOT_THRESHOLD + slack:
        theta = float(np.arccos(dot))
        s = float(np.sin(theta))
        branches.append((np.sin((1 - t) * theta) / s, np.sin(t * theta) / s))
    out = []
    for ca, cb in branches:
        e = ca * base + cb * other
        mag = abs(ca) * np.abs(base) + abs(cb) * np.abs(other)
        # The coefficients come from float32 norms and a float32 dot product: their
        # relative error is a few float32 roundings, which the term count absorbs.
        out.append(Candidate(e, Rounding("F32", r.stored).bound(mag, e, 8)))
    return out


def magnitude_mask(delta: np.ndarray, density: float) -> tuple[np.ndarray, np.ndarray]:
    """TIES sparsification: (kept, undecided) masks. ``undecided`` marks nonzero
    elements tied with the threshold that an unstable sort may keep or drop."""
    n = delta.size
    if density >= 1:
        return np.ones(delta.shape, bool), np.zeros(delta.shape, bool)
    if density <= 0 or n == 0:
        return np.zeros(delta.shape, bool), np.zeros(delta.shape, bool)
    k = max(1, int(density * n))
    mag = np.abs(delta.astype(np.float32)).reshape(-1)
    thr = np.partition(mag, n - k)[n - k]
    above = mag > thr
    at = mag == thr
    if int(above.sum()) + int(at.sum()) == k or thr == 0:
        kept = above | at if thr != 0 else above
        return kept.reshape(delta.shape), np.zeros(delta.shape, bool)
    return above.reshape(delta.shape), at.reshape(delta.shape)


def l1_rescale(delta: np.ndarray, kept: np.ndarray) -> float:
    before = float(np.abs(delta).sum())
    after = float(np.abs(delta[kept]).sum())
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return 1.0
    return before / after


def rescale_error(compute: str) -> float:
    """Relative error of an L1 rescale factor summed in ``compute``: torch accumulates in
    float32 (cascade summation) and stores each sum in the tensor's dtype."""
    return 2 * EPS.get(compute, EPS["F32"]) + 64 * EPS["F32"]


def contributions(
    deltas: Sequence[np.ndarray],
    weights: Sequence[float],
    masks: Sequence[np.ndarray | None],
    scales: Sequence[float],
    *,
    consensus: bool,
    normalize: bool,
    compute: str,
    extra: float = 0.0,
) -> list[np.ndarray]:
    """Each input's contribution per unit of its rescale factor, one ``(n, N)`` array per
    possible sign majority: the merge is ``base + lambda * sum_i scales_i * c[i]``.

    The majority (TIES sign election) is decided with ``scales``; where the weighted
    deltas cancel to within rounding a second array with the other majority is added.
    """
    per_unit = []
    for d, w, m in zip(deltas, weights, masks, strict=True):
        x = d * w
        per_unit.append(x if m is None else np.where(m, x, 0.0))
    unit = np.stack(per_unit)
    s = np.asarray(scales, dtype=np.float64).reshape((-1,) + (1,) * (unit.ndim - 1))
    stack = unit * s
    w = np.asarray(weights, dtype=np.float64).reshape(s.shape)
    n = len(deltas)
    if not consensus:
        div = float(w.sum())
        div = 1.0 if abs(div) < 1e-8 else div
        return [unit / div if normalize else unit]
    total = stack.sum(axis=0)
    majority = np.where(total >= 0, 1.0, -1.0)
    majorities = [majority]
    # Where the weighted deltas cancel to within rounding, the sign of their sum in the
    # compute dtype may be either.
    close = np.abs(total) <= (n + 2) * (EPS.get(compute, 1e-7) + extra) * np.abs(stack).sum(axis=0)
    if close.any():
        majorities.append(np.where(close, -majority, majority))
    out = []
    for maj in majorities:
        agree = np.sign(stack) == maj
        c = np.where(agree, unit, 0.0)
        if normalize:
            div = np.where(agree, w, 0.0).sum(axis=0)
            c = c / np.where(div == 0, 1.0, div)
        out.append(c)
    return out


def task_arithmetic(
    base: np.ndarray,
    deltas: Sequence[np.ndarray],
    weights: Sequence[float],
    masks: Sequence[np.ndarray | None],
    scales: Sequence[float],
    *,
    consensus: bool,
    normalize: bool,
    lam: float,
    r: Rounding,
    rescaled: bool,
) -> list[Candidate]:
    """Generalized task arithmetic for given sparsification masks and rescale factors."""
    extra = rescale_error(r.compute) if rescaled else 0.0
    contribs = contributions(
        deltas,
        weights,
        masks,
        scales,
        consensus=consensus,
        normalize=normalize,
        compute=r.compute,
        extra=extra,
    )
    return [candidate(base, c, scales, lam, r, extra) for c in contribs]


def candidate(
    base: np.ndarray,
    contrib: np.ndarray,
    scales: Sequence[float],
    lam: float,
    r: Rounding,
    extra: float = 0.0,
) -> Candidate:
    """``base + lam * sum_i scales_i * contrib_i`` with its rounding bound."""
    s = np.asarray(scales, dtype=np.float64).reshape((-1,) + (1,) * (contrib.ndim - 1))
    terms = contrib * s * lam
    mixed = terms.sum(axis=0)
    mag = np.abs(terms).sum(axis=0)
    e = base + mixed
    # Deltas are rounded once when formed (x - base), then once per product and sum; a
    # rescale factor carries its own summation error (``extra``, relative).
    n = contrib.shape[0]
    return Candidate(
        e, r.bound(np.abs(base) + mag + np.abs(mixed), e, n + 4) + extra * (n + 2) * mag
    )


def best(candidates: Sequence[Candidate], found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per element: whether some candidate explains it, and the nearest expected value."""
    ok = np.zeros(found.shape, bool)
    nearest = candidates[0].expected
    gap = np.full(found.shape, np.inf)
    for c in candidates:
        err = np.abs(found - c.expected)
        ok |= err <= c.bound
        better = err < gap
        nearest = np.where(better, c.expected, nearest)
        gap = np.minimum(gap, err)
    # NaN in both (e.g. a normalization by zero weight in the tool and here) agrees.
    ok |= np.isnan(found) & np.isnan(nearest)
    return ok, nearest
