"""Judge re-derived codes line by line: rows, columns, 16x16 blocks and salient weights.

A search algorithm (GPTQ, AWQ, AdaRound, k-quant scale search) may store codes that are
not the nearest ones, so a tensor-wide share of non-nearest codes says nothing about a
tampered row hidden among honest ones. What such algorithms do leave is a texture:
their non-nearest codes are spread over the whole tensor at a similar rate, they do not
prefer the largest weights, and the error they leave in a row stays of the same order
as in every other row. A hand edit breaks that texture where it was made. This module
accumulates, chunk by chunk, per-line counts of non-nearest codes and per-row error
(in quantization steps) over a 2-D view of a tensor (axis 0 = rows, the rest flattened
= columns), then flags

* lines (rows, columns, 16x16 blocks) whose non-nearest share is several times the
  tensor's upper reference share (the 90th percentile of its lines, so up to a tenth of
  lines may be tampered without moving the reference) and improbable under it
  (binomial tail, family-wise alpha);
* the salient set (the 1% largest |w|) when its non-nearest share is several times the
  share among the other weights and improbable under it;
* rows whose error is several times the typical row's (RMS error in steps), or whose
  accumulated signed error drifts far beyond a random walk (errors that compensate each
  other keep the sum small; a shifted row adds up);
* whole tensors whose non-nearest share is several times the file's typical tensor.

The thresholds are statements about mechanisms (an effect of 3x the reference share, or
60% of the codes the reference leaves nearest, whichever is smaller, and a tail
probability under 1e-6 over every line tested), not fits to a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

BLOCK = 16
SALIENT_SHARE = 0.01
ALPHA = 1e-6
EFFECT = 3.0
"""A line is out of line when its share is at least EFFECT times the reference share ...
"""
HEADROOM = 0.6
"""... or, for algorithms that already move a large share of codes (GPTQ moves about a
third), when it takes this fraction of the codes the reference leaves nearest."""
MIN_CODES = 3
"""Fewer non-nearest codes than this never make a line stand out."""
RMS_FACTOR = 3.0
RMS_FLOOR = 0.6
"""Steps: round-to-nearest leaves at most 0.5 per element and about 0.29 RMS."""
DRIFT_Z = 8.0


@dataclass
class LineProfile:
    """Counts for one tensor viewed as ``n_rows x n_cols``."""

    n_rows: int
    n_cols: int
    salient_threshold: float = math.inf
    rows_n: np.ndarray = field(init=False)
    rows_nn: np.ndarray = field(init=False)
    rows_err_sum: np.ndarray = field(init=False)
    rows_err_sq: np.ndarray = field(init=False)
    cols_n: np.ndarray = field(init=False)
    cols_nn: np.ndarray = field(init=False)
    blocks_n: np.ndarray = field(init=False)
    blocks_nn: np.ndarray = field(init=False)
    salient_n: int = 0
    salient_nn: int = 0
    salient_hits: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows_n = np.zeros(self.n_rows, np.int64)
        self.rows_nn = np.zeros(self.n_rows, np.int64)
        self.rows_err_sum = np.zeros(self.n_rows, np.float64)
        self.rows_err_sq = np.zeros(self.n_rows, np.float64)
        self.cols_n = np.zeros(self.n_cols, np.int64)
        self.cols_nn = np.zeros(self.n_cols, np.int64)
        shape = (-(-self.n_rows // BLOCK), -(-self.n_cols // BLOCK))
        self.blocks_n = np.zeros(shape, np.int64)
        self.blocks_nn = np.zeros(shape, np.int64)

    @classmethod
    def for_tensor(cls, w: np.ndarray) -> LineProfile:
        """A profile for ``w`` (any rank; axis 0 = rows) with its salient threshold."""
        rows = w.shape[0] if w.ndim else 1
        cols = int(w.size // max(rows, 1))
        mag = np.abs(np.asarray(w, dtype=np.float32)).reshape(-1)
        mag = mag[np.isfinite(mag)]
        k = max(1, int(mag.size * SALIENT_SHARE))
        thr = float(np.partition(mag, mag.size - k)[mag.size - k]) if mag.size else math.inf
        return cls(rows, cols, thr if thr > 0 else math.inf)

    def add(
        self,
        r0: int,
        nonnearest: np.ndarray,
        err: np.ndarray,
        counted: np.ndarray,
        magnitude: np.ndarray,
    ) -> None:
        """Add a chunk of rows starting at ``r0`` (2-D arrays ``rows x n_cols``).

        ``nonnearest``: codes that are not the nearest (ties excluded); ``err``: signed
        error (found - exact) in steps; ``counted``: elements that take part (finite,
        not clipped at the rails, where the nearest code is not defined by rounding).
        """
        nn = nonnearest & counted
        rows = slice(r0, r0 + nn.shape[0])
        self.rows_n[rows] += counted.sum(axis=1)
        self.rows_nn[rows] += nn.sum(axis=1)
        e = np.where(counted, err, 0.0).astype(np.float64)
        self.rows_err_sum[rows] += e.sum(axis=1)
        self.rows_err_sq[rows] += (e * e).sum(axis=1)
        self.cols_n += counted.sum(axis=0)
        self.cols_nn += nn.sum(axis=0)
        br = (np.arange(r0, r0 + nn.shape[0]) // BLOCK)[:, None]
        bc = (np.arange(self.n_cols) // BLOCK)[None, :]
        flat = (br * self.blocks_n.shape[1] + bc).reshape(-1)
        size = self.blocks_n.size
        self.blocks_n += (
            np.bincount(flat, weights=counted.reshape(-1), minlength=size)
            .astype(np.int64)
            .reshape(self.blocks_n.shape)
        )
        self.blocks_nn += (
            np.bincount(flat, weights=nn.reshape(-1), minlength=size)
            .astype(np.int64)
            .reshape(self.blocks_nn.shape)
        )
        sal = counted & (magnitude >= self.salient_threshold)
        self.salient_n += int(sal.sum())
        hits = np.argwhere(sal & nn)
        self.salient_nn += len(hits)
        if len(self.salient_hits) < 4096:
            self.salient_hits += [(int(r0 + r), int(c)) for r, c in hits[:4096]]

    @property
    def n(self) -> int:
        return int(self.rows_n.sum())

    @property
    def nn(self) -> int:
        return int(self.rows_nn.sum())


@dataclass(frozen=True)
class LineJudgement:
    """Lines of one tensor that stand out, each with the reason."""

    rows: tuple[int, ...] = ()
    columns: tuple[int, ...] = ()
    blocks: tuple[tuple[int, int], ...] = ()
    """(block row, block column) of 16x16 blocks."""
    salient: bool = False
    salient_elements: tuple[tuple[int, int], ...] = ()
    tensor: bool = False
    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.rows or self.columns or self.blocks or self.salient or self.tensor)

    def all_rows(self) -> tuple[int, ...]:
        """Rows touched by any flagged line (columns excepted: they cross every row)."""
        out = set(self.rows)
        for br, _ in self.blocks:
            out.update(range(br * BLOCK, (br + 1) * BLOCK))
        out.update(r for r, _ in self.salient_elements)
        return tuple(sorted(out))


def binomial_tail(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """log10 P(X >= k) for X ~ Binomial(n, p), by the Chernoff bound (an upper bound on
    the tail, so a line is flagged only when it is at least this improbable)."""
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    p = min(max(p, 1e-12), 1 - 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(k / np.maximum(n, 1), 1e-12, 1 - 1e-12)
        kl = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
        out = -n * kl / math.log(10)
    return np.where(k > n * p, out, 0.0)


def _reference(k: np.ndarray, n: np.ndarray, total_k: int, total_n: int) -> float:
    """Upper reference share of a family of lines: its 90th percentile share, never
    below the tensor's overall share nor one code in the whole tensor."""
    use = n > 0
    if not use.any():
        return 1.0
    rates = k[use] / n[use]
    return max(float(np.quantile(rates, 0.9)), total_k / max(total_n, 1), 1.0 / max(total_n, 1))


def effect_threshold(ref: float) -> float:
    """The share a line must reach to stand out against a reference share ``ref``."""
    return min(EFFECT * ref, ref + HEADROOM * (1 - ref))


def _outliers(k: np.ndarray, n: np.ndarray, ref: float, tests: int) -> np.ndarray:
    rate = np.divide(k, n, out=np.zeros(k.shape, np.float64), where=n > 0)
    logp = binomial_tail(k, n, ref)
    return (
        (k >= MIN_CODES)
        & (rate >= effect_threshold(ref))
        & (logp < math.log10(ALPHA / max(tests, 1)))
    )


def judge(profile: LineProfile, file_share: float | None = None) -> LineJudgement:
    """Lines of ``profile`` out of line with the rest of the tensor (and of the file,
    when ``file_share``, the typical tensor's non-nearest share, is given)."""
    p = profile
    reasons: list[str] = []
    total_k, total_n = p.nn, p.n
    tests = p.n_rows + p.n_cols + p.blocks_n.size + 2
    rows = cols = np.zeros(0, bool)
    blocks = np.zeros((0, 0), bool)
    if total_k:
        ref = _reference(p.rows_nn, p.rows_n, total_k, total_n)
        rows = _outliers(p.rows_nn, p.rows_n, ref, tests)
        if rows.any():
            reasons.append(
                f"{int(rows.sum())} rows with non-nearest shares >= "
                f"{effect_threshold(ref):.2%} where the tensor's rows reach {ref:.2%}"
            )
        ref_c = _reference(p.cols_nn, p.cols_n, total_k, total_n)
        cols = _outliers(p.cols_nn, p.cols_n, ref_c, tests) if p.n_rows >= BLOCK else cols
        if cols.any():
            reasons.append(f"{int(cols.sum())} columns with non-nearest shares out of line")
        ref_b = _reference(p.blocks_nn.reshape(-1), p.blocks_n.reshape(-1), total_k, total_n)
        blocks = _outliers(p.blocks_nn, p.blocks_n, ref_b, tests)
        if blocks.any():
            reasons.append(f"{int(blocks.sum())} 16x16 blocks with non-nearest shares out of line")
    # Salient weights: compare with the rest of the tensor.
    salient = False
    rest_n = total_n - p.salient_n
    if p.salient_nn >= MIN_CODES and rest_n > 0:
        base = max((total_k - p.salient_nn) / rest_n, 1.0 / max(total_n, 1))
        logp = float(binomial_tail(np.array(p.salient_nn), np.array(p.salient_n), base))
        if p.salient_nn >= effect_threshold(base) * p.salient_n and logp < math.log10(ALPHA):
            salient = True
            reasons.append(
                f"{p.salient_nn} of the {p.salient_n} largest weights are not the nearest "
                f"code ({p.salient_nn / max(p.salient_n, 1):.1%} against {base:.2%} elsewhere)"
            )
    # Row error: RMS several times the typical row's, or a signed drift.
    with np.errstate(divide="ignore", invalid="ignore"):
        rms = np.sqrt(
            np.divide(p.rows_err_sq, p.rows_n, where=p.rows_n > 0, out=np.zeros(p.n_rows))
        )
    used = p.rows_n > 0
    bad_err = np.zeros(p.n_rows, bool)
    if used.any():
        ref_rms = float(np.median(rms[used]))
        bad_err = used & (rms > max(RMS_FACTOR * ref_rms, RMS_FLOOR))
        drift = np.abs(p.rows_err_sum) / np.maximum(np.sqrt(p.rows_n) * max(ref_rms, 0.05), 1e-12)
        # A large drift needs errors beyond rounding: honest rows of a few elements can
        # sum to n/2 only when every element sits near a wall on the same side.
        bad_err |= used & (drift > DRIFT_Z) & (np.abs(p.rows_err_sum) > 1.0)
        if bad_err.any():
            reasons.append(
                f"{int(bad_err.sum())} rows whose error is out of line (RMS > "
                f"{max(RMS_FACTOR * ref_rms, RMS_FLOOR):.2f} steps or a drift beyond "
                f"{DRIFT_Z:g} sigma)"
            )
    tensor = False
    if file_share is not None and total_k >= MIN_CODES:
        logp = float(binomial_tail(np.array(total_k), np.array(total_n), max(file_share, 1e-9)))
        if total_k >= effect_threshold(file_share) * total_n and logp < math.log10(ALPHA):
            tensor = True
            reasons.append(
                f"non-nearest share {total_k / total_n:.2%} against the file's typical "
                f"tensor's {file_share:.2%}"
            )
    flagged_rows = set(np.flatnonzero(rows).tolist()) | set(np.flatnonzero(bad_err).tolist())
    return LineJudgement(
        rows=tuple(sorted(int(r) for r in flagged_rows)),
        columns=tuple(int(c) for c in np.flatnonzero(cols)),
        blocks=tuple((int(a), int(b)) for a, b in np.argwhere(blocks)),
        salient=salient,
        salient_elements=tuple(p.salient_hits[:256]) if salient else (),
        tensor=tensor,
        reasons=tuple(reasons),
    )


def file_share(profiles: Sequence[LineProfile]) -> float | None:
    """The typical tensor's non-nearest share (median over tensors with codes)."""
    shares = [p.nn / p.n for p in profiles if p.n >= 256]
    if len(shares) < 3:
        return None
    return max(float(np.median(shares)), 1e-6)
