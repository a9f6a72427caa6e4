"""DARE without its random stream: recover each element's drop mask from the output,
then require that every element follows exactly and that the masks look random.

mergekit draws DARE's masks with ``torch.bernoulli`` from the global generator after
seeding it once (``--random-seed``); the stream is consumed tensor after tensor in the
order mergekit's scheduler runs them, which is not part of the merge's definition. So
the mask is read back instead: for every element, each of the ``2^n`` keep/drop
combinations of the ``n`` deltas gives one possible merged value, and the deployed
value must be one of them within rounding, with the tensor's rescale factors
``L1(d_i) / L1(kept d_i)`` computed from the recovered masks (two passes: the first
recovers the masks with the expected factor ``1 / density``, the second checks every
element with the exact factors).

That leaves the mask itself as the only freedom, so it is tested for being the
Bernoulli(density) draw it claims to be. Only *decisive* elements count: those where
keeping or dropping delta ``i`` gives values further apart than rounding, judged with
the other deltas' recovered choices. Whether an element is decisive does not depend on
its own draw, so the keep rate among decisive elements is an unbiased binomial sample:

* per tensor and input, the keep rate must be within ``Z_TENSOR`` standard deviations
  of the density;
* per row, within a Bonferroni-style bound for the number of rows;
* among the 1% largest ``|d_i|`` of the tensor, within ``Z_TENSOR``: a mask chosen to
  drop (or keep) exactly the most salient changes fails here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scanner.claims.merge.methods import Rounding, candidate, contributions, rescale_error

Z_TENSOR = 6.0
Z_ROW_MARGIN = 4.0
SALIENT_SHARE = 0.01
MAX_INPUTS = 6
"""2^n candidate values per element: beyond this many deltas the search is refused."""


@dataclass
class MaskStats:
    """Running counts of decisive elements and their keep decisions, for one input."""

    density: float
    decisive: int = 0
    kept: int = 0
    salient_decisive: int = 0
    salient_kept: int = 0
    row_decisive: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row_kept: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def z(self, kept: float, n: float) -> float:
        p = self.density
        if n <= 0 or p <= 0 or p >= 1:
            return 0.0
        return (kept - n * p) / math.sqrt(n * p * (1 - p))

    def problems(self, label: str) -> tuple[list[str], list[int]]:
        """Messages and the rows whose keep rate is out of line."""
        out: list[str] = []
        z = self.z(self.kept, self.decisive)
        if abs(z) > Z_TENSOR:
            out.append(
                f"{label}: keep rate {self.kept / self.decisive:.4f} over {self.decisive:,} "
                f"decisive elements is {z:+.1f} standard deviations from density "
                f"{self.density:g}"
            )
        zs = self.z(self.salient_kept, self.salient_decisive)
        if abs(zs) > Z_TENSOR:
            out.append(
                f"{label}: among the largest {SALIENT_SHARE:.0%} of deltas the keep rate is "
                f"{self.salient_kept / max(self.salient_decisive, 1):.4f} "
                f"({zs:+.1f} standard deviations from density {self.density:g}): the drop "
                "mask follows the deltas' size, not chance"
            )
        rows: list[int] = []
        if self.row_decisive.size > 1 and 0 < self.density < 1:
            n = self.row_decisive.astype(np.float64)
            p = self.density
            with np.errstate(divide="ignore", invalid="ignore"):
                zr = (self.row_kept - n * p) / np.sqrt(n * p * (1 - p))
            limit = math.sqrt(2 * math.log(self.row_decisive.size)) + Z_ROW_MARGIN
            bad = np.flatnonzero((n >= 8) & (np.abs(np.nan_to_num(zr)) > limit))
            if bad.size:
                rows = bad.tolist()
                out.append(
                    f"{label}: {bad.size} rows keep deltas at a rate beyond chance "
                    f"(|z| > {limit:.1f}), e.g. row {rows[0]} keeps "
                    f"{int(self.row_kept[rows[0]])} of {int(n[rows[0]])}"
                )
        return out, rows

    def summary(self) -> dict[str, object]:
        return {
            "density": self.density,
            "decisive": self.decisive,
            "kept": self.kept,
            "keep_rate": round(self.kept / self.decisive, 6) if self.decisive else None,
            "z": round(self.z(self.kept, self.decisive), 3),
            "salient_keep_rate": round(self.salient_kept / self.salient_decisive, 6)
            if self.salient_decisive
            else None,
        }


class DareSolver:
    """Recovery of DARE masks and rescale factors over chunks of one tensor.

    Passes: ``fit`` (twice: choose each element's keep/drop combination under the
    current rescale factors, then refit each factor as the median ratio of observed to
    predicted change over the elements where its input alone contributes), then
    ``final`` (check every element and gather the mask statistics). The factors are
    fitted rather than computed because under TIES sign election a kept delta of the
    minority sign leaves no trace, so ``L1(kept)`` is not observable; the fitted factor
    must still agree with the observable part of the mask (checked in
    :meth:`scale_problems`).
    """

    def __init__(
        self,
        weights: Sequence[float],
        densities: Sequence[float],
        *,
        consensus: bool,
        normalize: bool,
        lam: float,
        rescale: bool,
        rounding: Rounding,
        n_rows: int,
        salient: Sequence[float],
    ) -> None:
        if len(weights) > MAX_INPUTS:
            raise ValueError(f"DARE with {len(weights)} inputs: at most {MAX_INPUTS}")
        self.weights = list(weights)
        self.densities = list(densities)
        self.sparse = [d < 1 for d in densities]
        self.consensus = consensus
        self.normalize = normalize
        self.lam = lam
        self.rescale = rescale
        self.r = rounding
        self.salient = list(salient)
        self.free = [i for i, sp in enumerate(self.sparse) if sp and rescale and densities[i] > 0]
        sparse_idx = [i for i, sp in enumerate(self.sparse) if sp]
        self.combos = [
            tuple(
                bool(c[sparse_idx.index(i)]) if i in sparse_idx else True
                for i in range(len(weights))
            )
            for c in itertools.product((False, True), repeat=len(sparse_idx))
        ]
        self.scales = [1.0 / d if i in self.free else 1.0 for i, d in enumerate(densities)]
        self.stats = [
            MaskStats(
                d,
                row_decisive=np.zeros(n_rows, np.int64),
                row_kept=np.zeros(n_rows, np.int64),
            )
            for d in densities
        ]
        self._ratios: list[list[np.ndarray]] = [[] for _ in self.free]
        self.observed: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in weights]
        self.l1_decisive_kept = [0.0] * len(weights)
        self.l1_undecided = [0.0] * len(weights)
        self.l1_all = [0.0] * len(weights)

    def _extra(self) -> float:
        return rescale_error(self.r.compute) if self.free else 0.0

    def _choose(
        self, base: np.ndarray, deltas: Sequence[np.ndarray], found: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[list[tuple]]]:
        """Per element: chosen combination, whether within bound, its expected value, and
        its contributions; plus every combination's candidates."""
        n = found.shape[0]
        best_idx = np.zeros(n, np.int64)
        best_score = np.full(n, np.inf)
        best_val = np.zeros(n)
        best_contrib = np.zeros((len(deltas), n))
        ok = np.zeros(n, bool)
        self.fitting = np.zeros(n, np.int64)
        per_combo: list[list[tuple]] = []
        for k, combo in enumerate(self.combos):
            masks = [None if keep else np.zeros(n, bool) for keep in combo]
            contribs = contributions(
                deltas,
                self.weights,
                masks,
                self.scales,
                consensus=self.consensus,
                normalize=self.normalize,
                compute=self.r.compute,
                extra=self._extra(),
            )
            cands = []
            fits = np.zeros(n, bool)
            for c in contribs:
                cand = candidate(base, c, self.scales, self.lam, self.r, self._extra())
                cands.append((cand, c))
                err = np.abs(found - cand.expected)
                within = err <= cand.bound
                # Prefer a combination within bound, then the nearest.
                score = np.where(within, err / np.maximum(cand.bound, 1e-300) - 2.0, err)
                better = score < best_score
                best_idx = np.where(better, k, best_idx)
                best_val = np.where(better, cand.expected, best_val)
                best_contrib = np.where(better, c, best_contrib)
                best_score = np.where(better, score, best_score)
                ok |= within
                fits |= within
            self.fitting += fits
            per_combo.append(cands)
        return best_idx, ok, best_val, best_contrib, per_combo

    def fit(self, base: np.ndarray, deltas: Sequence[np.ndarray], found: np.ndarray) -> None:
        """Collect, for each free factor, the ratio ``observed / predicted`` on elements
        where that input is the only rescaled one contributing."""
        if not self.free:
            return
        _, _, _, contrib, _ = self._choose(base, deltas, found)
        y = found - base
        fixed = [i for i in range(len(deltas)) if i not in self.free]
        if fixed:
            s = np.asarray(self.scales)[fixed].reshape(-1, 1)
            y = y - (contrib[fixed] * s * self.lam).sum(axis=0)
        active = contrib[self.free] != 0
        alone = active.sum(axis=0) == 1
        for j, i in enumerate(self.free):
            sel = alone & active[j]
            if sel.any():
                r = y[sel] / (contrib[i][sel] * self.lam)
                self._ratios[j].append(r[:: max(1, r.size // FIT_SAMPLE)])

    def settle(self) -> None:
        """Each free factor becomes the centre of the tightest large cluster of its
        ratios: elements read right all give the same ratio up to rounding, those whose
        combination was misread under the previous factors (or tampered) scatter."""
        for j, i in enumerate(self.free):
            if self._ratios[j]:
                r = np.concatenate(self._ratios[j])
                r = r[np.isfinite(r)]
                if r.size:
                    self.scales[i] = _mode(r)
            self._ratios[j] = []

    def final(
        self,
        base: np.ndarray,
        deltas: Sequence[np.ndarray],
        found: np.ndarray,
        rows: np.ndarray,
        offset: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ok, expected) per element; accumulates the mask statistics and, per input, the
        decisive positions (``offset`` + index) with their keep bits."""
        idx, ok, val, _, per_combo = self._choose(base, deltas, found)
        keep_table = np.asarray(self.combos, dtype=bool)
        first_exp = np.stack([c[0][0].expected for c in per_combo])
        first_bnd = np.stack([c[0][0].bound for c in per_combo])
        v_self = _gather(first_exp, first_bnd, idx)
        for i, d in enumerate(deltas):
            a = np.abs(d)
            self.l1_all[i] += float(a.sum())
            if not self.sparse[i]:
                continue
            keep = keep_table[idx, i]
            partner = np.asarray(
                [
                    self.combos.index(tuple(not v if j == i else v for j, v in enumerate(c)))
                    for c in self.combos
                ]
            )
            v_flip = _gather(first_exp, first_bnd, partner[idx])
            # Decisive: keeping or dropping delta i gives values further apart than their
            # rounding bounds (the other deltas as recovered).
            decisive = np.abs(v_self[0] - v_flip[0]) > (v_self[1] + v_flip[1])
            decisive &= ok
            self.l1_decisive_kept[i] += float(a[decisive & keep].sum())
            self.l1_undecided[i] += float(a[~decisive].sum())
            # For the seed replay only bits that are certain: an element that two
            # combinations explain (values coinciding within rounding) shows neither's.
            # (Not for the statistics: which elements two combinations explain depends
            # on the element's own draw.)
            where = np.flatnonzero(decisive & (self.fitting == 1))
            self.observed[i].append((where + offset, keep[where]))
            st = self.stats[i]
            st.decisive += int(decisive.sum())
            st.kept += int((decisive & keep).sum())
            sal = decisive & (a >= self.salient[i])
            st.salient_decisive += int(sal.sum())
            st.salient_kept += int((sal & keep).sum())
            np.add.at(st.row_decisive, rows[decisive], 1)
            np.add.at(st.row_kept, rows[decisive & keep], 1)
        return ok, val

    def scale_problems(self) -> list[str]:
        """A fitted factor ``L1(d) / L1(kept d)`` must fit the observed mask: the kept
        L1 it implies lies between the L1 of the deltas seen kept and that plus the L1 of
        the deltas whose fate left no trace."""
        out = []
        for i in self.free:
            s = self.scales[i]
            if s <= 0:
                out.append(f"input {i + 1}: fitted rescale factor {s:g} is not positive")
                continue
            implied = self.l1_all[i] / s
            low = self.l1_decisive_kept[i]
            high = low + self.l1_undecided[i]
            tol = SCALE_TOLERANCE * self.l1_all[i]
            if not low - tol <= implied <= high + tol:
                out.append(
                    f"input {i + 1}: rescale factor {s:.6g} implies kept deltas of L1 "
                    f"{implied:.6g}, but the output shows {low:.6g} kept "
                    f"(at most {high:.6g} possible)"
                )
        return out


FIT_ROUNDS = 3
"""Fitting rounds: the first reads the combinations under 1 / density, the second under
the first fit."""
FIT_SAMPLE = 1 << 18
"""Ratios kept per chunk and input for the median."""
SCALE_TOLERANCE = 1e-3
CLUSTER_WIDTH = 1e-3
"""Relative half-width of the window in which ratios count as one value."""


def _mode(r: np.ndarray) -> float:
    """The median of the most populated ``CLUSTER_WIDTH`` window of ``r``."""
    r = np.sort(r)
    lo = np.searchsorted(r, r - np.abs(r) * CLUSTER_WIDTH, side="left")
    hi = np.searchsorted(r, r + np.abs(r) * CLUSTER_WIDTH, side="right")
    k = int(np.argmax(hi - lo))
    return float(np.median(r[lo[k] : hi[k]]))


"""Relative slack of the L1 consistency check (float32 sums of the tool)."""


def _gather(
    expected: np.ndarray, bound: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Expected value and bound of each element's combination (first candidate)."""
    pick = idx[None, :]
    return (
        np.take_along_axis(expected, pick, axis=0)[0],
        np.take_along_axis(bound, pick, axis=0)[0],
    )
