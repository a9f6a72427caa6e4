"""Quantization-gap check: weights pressed against the walls of quantization bins.

The box-constrained quantization attack (docs/threats.md#quantization-activated-backdoors)
moves every weight inside the interval that rounds to a chosen code and keeps it a margin
away from the bin walls so that full-precision repair cannot leak across. Its footprint
is in the rounding residual ``r = w/s - round(w/s)``: benign weights spread r evenly over
[-0.5, 0.5]; attacked ones pile up within the attacker's margin of +/-0.5.

The passive test, per tensor and per row, on every grid of ``scanner.claims.gap_grids``
(int8/uint8, symmetric and asymmetric, per tensor and per channel; ggml Q8_0, Q4_0/1,
Q5_0/1 and K-quants; bitsandbytes NF4/FP4), in code coordinates where walls are the
half-integers: for bands ``b`` (distance to the nearest wall) from 0.01 to 0.25, count
residuals within ``b`` of the inner wall (towards zero) and of the outer wall separately,
and compare each count with its null: the larger of the uniform share ``b`` and the share
seen on control grids (the same grid shifted by a quarter, half and three quarters of a
step: they see the weight distribution's shape and storage lattice, but walls planted on
the true grid land inside the control bins). A
tensor is flagged only when *both* walls show an excess (the attack sides at random; a
density slope inside bins raises one wall and lowers the other) and the Chernoff bound on
the binomial tail is below ``ALPHA`` divided by the number of tests (Bonferroni over
tensors, schemes, bands and rows). Elements on a code point (``|r| < 1e-3``) are set
aside one by one: a code point is no wall, whatever share of the tensor sits there (a
tensor 51% on the grid still has its other 49% tested). When a tensor holds one grid's
code points in bulk (``LATTICE_SHARE``, QAT or partly dequantized), those elements are
set aside for every grid. Grids a tensor cannot be tested on (rows not a whole number of
blocks, too few elements left) are named in one MS410 finding.

Dequantized codes (every row on an even lattice, whatever the grid that made it): the
null is simulated on that lattice as for low-precision storage below (and never below
the control grids' share), on elements where the lattice has at least 16 points per bin;
coarser places have arithmetic wall distances and are set aside.

Low-precision storage (bf16, fp16: fewer than ``MIN_MANTISSA_BITS`` significand bits in
use): the residuals of stored values sit on a lattice of a few points per step whose
alignment with the walls is arithmetic (a bf16 value near code 100 is a multiple of half a
step), so neither the uniform share nor shifted grids are the right null. There the null
is simulated on the same lattice: every element is replaced by stratified draws spread
evenly over its own bin, rounded to the storage format with the same step, and counted
like the real residuals, wall by wall and row by row; the test uses that expectation plus
four Monte Carlo standard errors. Benign low-precision weights match it; box-projected
weights stored in bf16 or fp16 keep their excess at the lattice points next to the walls.

Cost: one pass per grid, binning every residual's distance to its wall into 1/400-step
cells and counting them per row with one ``bincount``, in cache-sized row chunks spread
over all cores, in float32 (no float64 copy of a tensor). Tensors above
``MAX_TEST_ELEMENTS`` are tested on evenly spaced rows (the power is stated there).

In a diff, a tensor flagged against these nulls is tested again against the change
itself: the trusted rows moved by the same deltas shuffled within each row. A benign
change moves a weight independently of its place in the bin, so that null keeps whatever
layout the trusted weights had on this grid (dequantized from another grid, smeared by
the change) and removes only the dependence on position that a gap attack creates.

The active test, reported beside a finding: quantize with and without a uniform noise of
``NOISE`` steps and count flipped codes (computed for flagged tensors only). Uniform
residuals flip ``NOISE / 2`` of codes (on average); residuals inside a margin smaller
than the noise flip far more.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.claims.gap_grids import BY_NAME, GRIDS, Coordinates, untestable
from scanner.findings import Finding, Location, Region, Severity
from scanner.parallel import run_parallel
from scanner.rulebook import define_rule, finding

QUANT_GAP = define_rule(
    "MS409",
    "quantization-gap",
    Severity.MEDIUM,
    "Weights pile up at quantization bin walls",
    checks="On full-precision tensors, the rounding residual (position in the bin) on "
    "every commonly deployed grid: int8 symmetric and uint8 asymmetric per tensor and per "
    "channel, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K/Q5_K/Q6_K (approximate scales), "
    "bitsandbytes NF4/FP4 (blocks of 64): a statistically significant excess of residuals "
    "near both bin walls (any narrow band, per tensor and per row), elements on code "
    "points set aside one by one (never the whole tensor), with the fraction of codes that "
    "flip under a small noise as a second signal. Grids not tested are named by MS410.",
    why="Quantization-activated backdoors (box-constrained PGD: Ma et al. 2021, Egashira "
    "et al. 2024, 'Mind the Gap' 2025) ship a benign float model whose quantized version "
    "is malicious; the constraint leaves weights pressed against the bin walls.",
    example="`encoder.layer.2.intermediate.dense.weight` (int8 per-channel): 61% of "
    "residuals within 0.08 of a wall on both sides, expected 16%; 1,536 rows; 47% of "
    "codes flip under 0.15-step noise (benign about 7.5%).",
    fix="Do not quantize this artifact; obtain the model from its original trainer, or "
    "add noise larger than the margin before quantizing (breaks the planted codes).",
    references=("docs/claims.md", "docs/threats.md#quantization-activated-backdoors"),
)

GAP_COVERAGE = define_rule(
    "MS410",
    "quantization-gap-coverage",
    Severity.INFO,
    "Quantization grids the gap check could not test",
    checks="Lists, per quantization grid, the float tensors the quantization-gap check "
    "(MS409) could not test and why (rows not a whole number of the grid's blocks, too "
    "few elements off the grid's code points), and the grids tested with approximate "
    "scales (K-quants).",
    why="A clean quantization-gap result only covers the grids and tensors actually "
    "tested; a deployment that quantizes to an untested grid is not covered.",
    example="q4_k: 12 tensors not tested (rows of 384 elements are not a multiple of "
    "256); approximate scales: q4_k, q5_k, q6_k.",
    fix="Nothing to fix; quantize only to a grid the check covered, or re-check the "
    "quantized artifact with a claim (`--claim gguf:q4_k`).",
    references=("docs/claims.md",),
)
ALPHA = 1e-6
"""Family-wise false-alarm probability per artifact."""
MIN_ELEMENTS = 4096
"""Tensors smaller than this give noisy histograms and are not tested."""
MIN_ROW_ELEMENTS = 256
ON_GRID_TOL = 1e-3
MIN_MANTISSA_BITS = 16
"""Below this many significand bits (bf16, fp16 data) the residuals live on a coarse
lattice whose alignment with the walls is arithmetic; the null is then simulated on the
same lattice instead of taken from uniform and control grids."""
LATTICE_SHARE = 0.25
"""A tensor whose elements sit on one grid's code points (within ``ON_GRID_TOL``) this
often (over a hundred times chance) holds dequantized or QAT values of that grid: those elements are
explained by it, and are tested against no grid (their residuals on other grids are
arithmetic, not a weight distribution's)."""
LATTICE_SAMPLE_ROWS = 64
LATTICE_RESOLUTION = 0.0625
"""Dequantized codes are tested on a grid only where their lattice step is at most this
share of the grid's bin (sixteen lattice points per bin or more)."""
LATTICE_ROWS = 0.99
"""Share of a tensor's values on their row's even lattice for it to count as dequantized
codes; the null is then simulated on that lattice."""
MAX_TEST_ELEMENTS = 1 << 18
"""Elements tested per tensor and grid: larger tensors are tested on evenly spaced rows
(at least this many elements). Power: on 262,144 elements the per-tensor test sees 1% of
the weights pressed within 0.05 of the walls (Chernoff bound near e^-50 against a
threshold near e^-30 for a large model); the per-row test covers every sampled row, so an attack on
a share f of the rows is seen on about f of the sampled rows (all rows of a tensor up to
this size, and in a diff only changed rows are candidates)."""
BANDS = (0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25)
CONTROL_OFFSETS = (0.25, 0.5, 0.75)
NOISE = 0.15
SIM_DRAWS = 4
"""Stratified draws per element for the simulated null of low-precision storage."""
CHUNK_ELEMENTS = 1 << 18
"""Elements per pass (cache-sized; also bounds the temporaries)."""
SCHEMES = tuple(g.name for g in GRIDS)


@dataclass(frozen=True)
class GapResult:
    tensor: str
    scheme: str
    n: int
    on_grid_fraction: float
    flagged: bool
    band: float = 0.0
    inner: float = 0.0
    outer: float = 0.0
    expected: float = 0.0
    log10_p: float = 0.0
    rows: tuple[int, ...] = ()
    flip_fraction: float = 0.0
    flip_expected: float = NOISE / 2
    skipped: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _grid(w2: np.ndarray, scheme: str, extent: tuple[float, float] | None = None) -> Coordinates:
    """Code coordinates of a 2-D float array on ``scheme`` (walls at half-integers);
    ``extent`` is the whole tensor's (min, max) when ``w2`` holds part of its rows."""
    if extent is None:
        extent = (float(w2.min()), float(w2.max())) if w2.size else (0.0, 0.0)
    return BY_NAME[scheme].coordinates(w2, extent)


def _mantissa_bits(w2: np.ndarray) -> int:
    """Significand bits the values actually use (23 for float32 data, 7 for bf16 data
    stored as float32, 10 for fp16 ...): trailing zero bits common to every element."""
    bits = np.bitwise_or.reduce(w2.view(np.uint32).reshape(-1) & np.uint32(0x7FFFFF))
    bits = int(bits)
    if bits == 0:
        return 0
    return 23 - ((bits & -bits).bit_length() - 1)


_CELLS = 100
"""Phase cells per code step in the wall histogram: every band and every control offset
is a whole number of cells, so counting cells loses nothing."""
_BAND_CELLS = [round(b * _CELLS) for b in BANDS]
_OFFSET_CELLS = [round(o * _CELLS) for o in CONTROL_OFFSETS]
assert all(abs(b * _CELLS - c) < 1e-9 for b, c in zip(BANDS, _BAND_CELLS, strict=True))
assert all(abs(o * _CELLS - c) < 1e-9 for o, c in zip(CONTROL_OFFSETS, _OFFSET_CELLS, strict=True))
assert max(_BAND_CELLS) <= _CELLS // 2 and 0 < min(_OFFSET_CELLS) <= max(_OFFSET_CELLS) < _CELLS
_CLASS = _CELLS + 1
"""Histogram keys per sign class: phase cells 0.._CELLS (the last one is a residual of
exactly +1/2, on the upper wall)."""


def _wall_counts(
    q: np.ndarray, valid: np.ndarray, offsets: tuple[int, ...] = ()
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row and band, the number of valid residuals within the band of the inner wall
    (towards zero) and of the outer wall: arrays of shape (rows, len(BANDS)), for the
    coordinates ``q`` and then for ``q`` shifted by each of ``offsets`` (in cells).

    One pass: each element's phase within its bin is cut into cells of ``1 / _CELLS``
    step and counted per row and sign class with one ``bincount``. A band is a whole
    number of cells at either end of the phase, and a shift is a rotation of the phase,
    so every band of every shifted grid is a sum of histogram cells: one product with
    a 0/1 matrix (``_band_matrix``) reads them all off. The sign of a shifted coordinate
    (which wall is the inner one) changes only for coordinates in [-1, 0), which get a
    class of their own, their coordinate known from the cell.
    """
    return _bands(_phase_hist(q, valid), (0, *offsets))


_WIDTH = 3 * _CLASS + 1
"""Histogram cells per row: the sign classes' phase cells, then a sink."""
_BLAS_ONE_THREAD = 1 << 18
"""Products of at most this many multiply-adds run on one thread in OpenBLAS."""


def _phase_hist(q: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, the valid elements by sign class and phase cell: (rows, _WIDTH) counts,
    the last column the elements not tested."""
    rows = q.shape[0]
    # Phase cell of the residual r in [-1/2, 1/2]: floor((r + 1/2) * _CELLS) in 0.._CELLS.
    phase = q - np.rint(q)
    phase *= np.float32(_CELLS)
    phase += np.float32(_CELLS / 2)
    key = phase.astype(np.int32)
    del phase
    # Sign class: 0 for q >= 0, 1 for -1 <= q < 0, 2 for q < -1.
    cls = np.less(q, 0).view(np.int8) + np.less(q, -1).view(np.int8)
    key += cls * np.int32(_CLASS)
    key[~valid] = _WIDTH - 1
    key += (np.arange(rows, dtype=np.int32) * np.int32(_WIDTH)).reshape(
        (rows,) + (1,) * (q.ndim - 1)
    )
    return np.bincount(key.reshape(-1), minlength=rows * _WIDTH).reshape(rows, _WIDTH)


def _bands(hist: np.ndarray, shifts: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inner, outer) counts per row and band, for each shift, from a phase histogram."""
    matrix = _band_matrix(shifts)
    rows = hist.shape[0]
    counts = np.empty((rows, matrix.shape[1]))
    # In blocks of rows small enough for BLAS to keep on the calling thread, itself one
    # of the pool's workers: its own threads would only compete with the other workers.
    block = max(1, _BLAS_ONE_THREAD // matrix.size)
    for r0 in range(0, rows, block):
        np.matmul(hist[r0 : r0 + block].astype(np.float64), matrix, out=counts[r0 : r0 + block])
    counts = counts.reshape(rows, len(shifts), 2, len(BANDS))
    return [(counts[:, k, 0], counts[:, k, 1]) for k in range(len(shifts))]


def _turns_non_negative(shift: int) -> np.ndarray:
    """Cells of a coordinate in [-1, 0) that a shift of ``shift`` cells makes
    non-negative: the cell's coordinate (cell / _CELLS - 1/2 below the half, - 3/2 above)
    is -shift / _CELLS or more."""
    cells = np.arange(_CELLS)
    half = _CELLS // 2
    below = (cells < half) & (cells >= half - shift)
    return below | ((cells >= half) & (cells >= 3 * half - shift))


@functools.cache
def _band_matrix(shifts: tuple[int, ...]) -> np.ndarray:
    """The 0/1 matrix from a row's histogram (sign class, phase cell; then the sink) to
    its (shift, [inner, outer], band) counts.

    Shifted by ``s`` cells, a residual in cell ``c`` lands in cell ``(c + s) % _CELLS``
    (the last cell, exactly +1/2, counts as the one below it). Cells below the half are
    the lower wall's, counted from the wall inwards; cells above the half the upper
    wall's, from the top. The lower wall is the inner one for non-negative coordinates:
    class 0 always, class 2 never, class 1 where the shift turns it non-negative."""
    half = _CELLS // 2
    bands = np.asarray(_BAND_CELLS)
    out = np.zeros((3 * _CLASS + 1, len(shifts), 2, len(BANDS)))
    for k, s in enumerate(shifts):
        up = _turns_non_negative(s)
        for cls in range(3):
            for c in range(_CLASS):
                cell = min(c, _CELLS - 1)
                non_negative = cls == 0 or (cls == 1 and bool(up[cell]))
                moved = (cell + s) % _CELLS
                lower = moved < half
                distance = moved if lower else _CELLS - 1 - moved
                side = 0 if lower == non_negative else 1  # 0: inner, 1: outer
                out[cls * _CLASS + c, k, side] = distance < bands
    out.flags.writeable = False
    return out.reshape(3 * _CLASS + 1, -1)


def _significand_rounder(mbits: int) -> Callable[[np.ndarray], np.ndarray]:
    """Rounds float32 values to ``mbits`` significand bits, half to even, on the bits
    (bf16 for 7 bits); the exponent range is float32's."""
    shift = np.uint32(23 - max(mbits, 0))
    one = np.uint32(1)
    half = np.uint32((1 << (int(shift) - 1)) - 1) if shift else np.uint32(0)
    mask = np.uint32(~((1 << int(shift)) - 1) & 0xFFFFFFFF)

    def rnd(x: np.ndarray) -> np.ndarray:
        u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        return ((u + (((u >> shift) & one) + half)) & mask).view(np.float32)

    return rnd


_FP16_SIGNIFICAND = _significand_rounder(10)
_FP16_MIN_NORMAL = np.float32(2.0**-14)
_FP16_SUBNORMAL_STEP = np.float32(2.0**-24)
_FP16_MAX = np.float32(65504.0)


def fp16_round(x: np.ndarray) -> np.ndarray:
    """``x.astype(float16).astype(float32)`` for float32 ``x``, an order of magnitude
    faster: ten significand bits where fp16 is normal, whole multiples of 2^-24 below
    (subnormals), infinity beyond its largest finite value; half to even throughout."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = _FP16_SIGNIFICAND(x)
    small = np.abs(x) < _FP16_MIN_NORMAL
    if small.any():
        tiny = x[small]
        out[small] = np.copysign(np.rint(tiny / _FP16_SUBNORMAL_STEP) * _FP16_SUBNORMAL_STEP, tiny)
    big = (np.abs(out) > _FP16_MAX) & np.isfinite(x)
    if big.any():
        out[big] = np.copysign(np.float32(np.inf), x[big])
    return out


def _is_fp16(w2: np.ndarray, mbits: int) -> bool:
    """fp16 data: more significand bits than bf16 keeps, and every value an fp16 number.
    (bf16 data usually fits fp16 too, but its lattice is the coarser 7-bit one.)"""
    if not 7 < mbits <= 10:
        return False
    # Ten significand bits or fewer: an fp16 number unless outside fp16's finite range
    # or below its normal range and off the subnormals' multiples of 2^-24.
    magnitude = np.abs(w2)
    beyond = magnitude[~(magnitude <= _FP16_MAX)]  # NaN or past fp16's range (inf is fp16)
    if not np.isinf(beyond).all():
        return False
    tiny = magnitude[magnitude < _FP16_MIN_NORMAL]
    return bool(np.array_equal(np.rint(tiny / _FP16_SUBNORMAL_STEP) * _FP16_SUBNORMAL_STEP, tiny))


def _storage_rounder(w2: np.ndarray, mbits: int) -> Callable[[np.ndarray], np.ndarray]:
    """The rounding that put the values on their storage lattice: fp16 for fp16 data
    (subnormals included), else round-to-nearest-even to ``mbits`` significand bits in
    float32 (bf16 for 7 bits)."""
    return fp16_round if _is_fp16(w2, mbits) else _significand_rounder(mbits)


LATTICE_LEVELS = 300
"""Most lattice steps a group of dequantized codes spans (8-bit codes: 255)."""
LATTICE_BLOCKS = (32, 16)
"""Scale groups of block-quantized codes (ggml blocks and K-quant sub-blocks) tried when
rows are no single even lattice."""


def _even(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(offset, step, share of values on the lattice) per group along the last axis: the
    step is the smallest gap between distinct values, a value is on the lattice when it
    is a whole number of steps from the group's smallest value."""
    srt = np.sort(x, axis=-1)
    gaps = np.diff(srt, axis=-1)
    tiny = np.float32(1e-6) * np.maximum(np.abs(srt).max(axis=-1, keepdims=True), 1e-30)
    step = np.where(gaps > tiny, gaps, np.inf).min(axis=-1)
    step = np.where(np.isfinite(step), step, np.float32(1.0))  # one value: any step
    off = srt[..., 0]
    # A small group may skip codes, so its smallest gap can be 2-4 steps: per group, the
    # largest step (smallest divisor) that puts every value on the lattice.
    best_on = np.zeros(x.shape, dtype=bool)
    done = np.zeros(step.shape, dtype=bool)
    chosen = step.copy()
    for m in (1, 2, 3, 4):
        cand = step / np.float32(m)
        # More than 8-bit codes is the storage format's lattice, not a quantizer's (fp16
        # scales times small integers sit on a fine power-of-two lattice). The largest
        # code is the largest value's; when no group is coded at this step, none is at
        # a finer one, and no element needs its code.
        top = (srt[..., -1:] - off[..., None]) / cand[..., None]
        coded = np.rint(top) <= LATTICE_LEVELS
        if not coded.any():
            break
        k = (x - off[..., None]) / cand[..., None]
        on = (np.abs(k - np.rint(k)) < 1e-3) & coded
        full = on.all(axis=-1) & ~done
        chosen = np.where(full, cand, chosen)
        best_on |= on & full[..., None]
        if m == 1:
            best_on |= on & ~full[..., None]  # partly on at the plain step
        done |= full
    step, on = chosen, best_on
    return off.astype(np.float32), step.astype(np.float32), float(on.mean())


def row_lattice(w2: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(offset, step) per scale group, shaped (rows, groups), when the values are
    dequantized codes: every row on one evenly spaced lattice (any per-row or per-tensor
    grid, whatever its scale, zero point or rounding of the extent), or every block of
    32 or 16 (ggml and K-quant scale groups, whatever scales llama.cpp searched). None
    when less than ``LATTICE_ROWS`` of the values sit on such lattices."""
    rows, cols = w2.shape
    if cols >= 128:
        off, step, share = _even(w2)
        if share >= LATTICE_ROWS:
            return off[:, None], step[:, None]
    for size in LATTICE_BLOCKS:
        if cols % size:
            continue
        off, step, share = _even(w2.reshape(rows, -1, size))
        if share >= LATTICE_ROWS:
            return off, step
    return None


def first_occurrences(w2: np.ndarray) -> np.ndarray:
    """Mask of each row's first occurrence of every value. The binomial test assumes
    independent residuals; a value repeated by construction (a Fourier basis, a shared
    constant) is one draw, not many. Pressed weights are distinct values, so setting
    repeats aside costs an attack nothing."""
    # Sort (value, position) keys: all distinct, so any sort puts each value's first
    # position first, several times faster than a stable argsort. The value part is
    # the float32 pattern made to order like the value (-0.0 counted as 0.0).
    bits = (w2.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    ordered = np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    keys = (ordered << np.uint64(32)) | np.arange(w2.shape[1], dtype=np.uint64)
    keys.sort(axis=1)
    order = (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)
    value = keys >> np.uint64(32)
    first_sorted = np.ones(w2.shape, dtype=bool)
    first_sorted[:, 1:] = value[:, 1:] != value[:, :-1]
    first = np.empty(w2.shape, dtype=bool)
    np.put_along_axis(first, order, first_sorted, axis=1)
    # NaN equals nothing, itself included: every NaN is a first occurrence
    first |= np.isnan(w2)
    return first


def _lattice_rounder(off: np.ndarray, step: np.ndarray) -> Any:
    """Rounds rows ``sl`` of values to their lattice (per row or per block)."""

    def rnd(x: np.ndarray, sl: slice) -> np.ndarray:
        o, d = off[sl][:, :, None], step[sl][:, :, None]
        g = x.reshape(o.shape[0], o.shape[1], -1)
        return (o + np.rint((g - o) / d) * d).astype(np.float32, copy=False).reshape(x.shape)

    return rnd


def _simulated_counts(
    c: Coordinates, valid: np.ndarray, rnd: Any, seed: int, sl: slice
) -> tuple[np.ndarray, np.ndarray]:
    """Expected wall counts of benign weights *stored on the same lattice*: each element
    is replaced by values spread evenly over its own bin (``SIM_DRAWS`` stratified
    draws), rounded to the storage lattice, mapped back to the grid, and counted like
    the real residuals. Returns (inner, outer) averaged over the draws."""
    rng = np.random.default_rng(seed)
    base = np.rint(c.q) - np.float32(0.5)
    rows, size = c.q.shape[0], c.q.size
    hist = np.zeros((rows, _WIDTH), np.int64)
    for j in range(SIM_DRAWS):
        # 16 random bits place a draw within its stratum (a 262,144th of a bin): far
        # finer than the band cells and than any storage lattice inside a bin.
        bits = rng.bit_generator.random_raw((size + 3) // 4).view(np.uint16)[:size]
        u = bits.reshape(c.q.shape).astype(np.float32)
        u += np.float32(0.5 + j * 65536)
        u *= np.float32(1.0 / (65536 * SIM_DRAWS))
        u += base
        x = c.to_code(rnd(c.to_value(u).reshape(valid.shape), sl).reshape(c.q.shape))
        hist += _phase_hist(x, valid)
    ((inner, outer),) = _bands(hist, (0,))
    return inner / SIM_DRAWS, outer / SIM_DRAWS


def _counts(
    w2: np.ndarray,
    scheme: str,
    mbits: int,
    seed: int,
    lattice: str | None = None,
    extent: tuple[float, float] | None = None,
    grid_lattice: tuple[np.ndarray, np.ndarray] | None = None,
    distinct: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-row counts for one grid, in row chunks (bounded memory, cache-sized passes):
    tested elements, on-grid elements, inner/outer wall counts on the true grid, the
    largest control-grid share, and (for low-precision storage) the simulated null.

    Elements on a code point of the grid (or of the ``lattice`` grid the tensor holds)
    are counted as on-grid and not tested: a code point is no wall."""
    rows = w2.shape[0]
    per_row = max(w2.shape[1], 1)
    chunk = max(1, CHUNK_ELEMENTS // per_row)
    if extent is None:
        extent = (float(w2.min()), float(w2.max())) if w2.size else (0.0, 0.0)
    nb = len(BANDS)
    out = {
        "n": np.zeros(rows, np.int64),
        "on_grid": np.zeros(rows, np.int64),
        "inner": np.zeros((rows, nb)),
        "outer": np.zeros((rows, nb)),
        "ctrl": np.zeros((rows, nb)),
        "ctrl_sum": np.zeros((len(CONTROL_OFFSETS), nb)),
        "sim_inner": np.zeros((rows, nb)),
        "sim_outer": np.zeros((rows, nb)),
    }
    if grid_lattice is not None:
        rnd = _lattice_rounder(*grid_lattice)
    elif mbits < MIN_MANTISSA_BITS:
        storage = _storage_rounder(w2, mbits)
        rnd = lambda x, sl: storage(x)  # noqa: E731  (the same rounding for every row)
    else:
        rnd = None
    ctrl_parts: list[np.ndarray] = []

    def one(r0: int) -> None:
        # Each chunk writes its own rows; numpy releases the GIL, so chunks run in
        # parallel on all cores.
        sl = slice(r0, r0 + chunk)
        wc = w2[sl]
        c = _grid(wc, scheme, extent)
        q = c.q
        valid = c.valid & (wc != 0)
        if distinct is not None:
            valid &= distinct[sl]
        on = valid & (np.abs(q - np.rint(q)) < ON_GRID_TOL)
        if lattice is not None and lattice != scheme:
            lq = _grid(wc, lattice, extent).q
            on |= valid & (np.abs(lq - np.rint(lq)) < ON_GRID_TOL)
        if grid_lattice is not None:
            # Dequantized codes: where the lattice has fewer than 1 / LATTICE_RESOLUTION
            # points per bin, wall distances are arithmetic, not chosen: not tested.
            bin_width = np.abs(c.to_value(q + np.float32(0.5)) - c.to_value(q - np.float32(0.5)))
            per = wc.shape[1] // grid_lattice[1].shape[1]
            lat_step = np.repeat(grid_lattice[1][sl], per, axis=1)
            coarse = lat_step > LATTICE_RESOLUTION * bin_width
            on |= valid & coarse
        valid &= ~on
        out["n"][sl] = valid.sum(axis=1)
        out["on_grid"][sl] = on.sum(axis=1)
        (inner, outer), *controls = _wall_counts(q, valid, tuple(_OFFSET_CELLS))
        out["inner"][sl], out["outer"][sl] = inner, outer
        if rnd is not None:
            out["sim_inner"][sl], out["sim_outer"][sl] = _simulated_counts(
                c, valid, rnd, seed + r0, sl
            )
        part = np.zeros((len(CONTROL_OFFSETS), nb))
        for k, (ic, oc) in enumerate(controls):
            part[k] = np.maximum(ic.sum(0), oc.sum(0))
            np.maximum(out["ctrl"][sl], np.maximum(ic, oc), out=out["ctrl"][sl])
        ctrl_parts.append(part)

    starts = range(0, rows, chunk)
    if len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
            list(pool.map(one, starts))
    else:
        for r0 in starts:
            one(r0)
    if ctrl_parts:
        out["ctrl_sum"] = np.sum(ctrl_parts, axis=0)
    return out


def _sim_null(expected: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Upper confidence bound on the null share from simulated counts: the Monte Carlo
    estimate plus four of its standard errors (and one count), so that the simulation's
    own noise never makes a benign row look like an excess."""
    n = np.maximum(n, 1)
    p = expected / n
    se = np.sqrt(np.maximum(p, 1.0 / n) / (SIM_DRAWS * n))
    return np.minimum(p + 4 * se + 1.0 / (SIM_DRAWS * n), 1 - 1e-9)


def _log_tail(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Chernoff bound on log P(X >= k), X ~ Bin(n, p): -n KL(k/n || p) where k/n > p."""
    n = np.maximum(n, 1)
    q = np.clip(k / n, 1e-12, 1 - 1e-12)
    p = np.clip(p, 1e-12, 1 - 1e-12)
    kl = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return np.where(q > p, -n * kl, 0.0)


def lattice_of(w2: np.ndarray, extent: tuple[float, float] | None = None) -> str | None:
    """The grid whose code points hold at least ``LATTICE_SHARE`` of the elements
    (dequantized or QAT values), judged on evenly spaced rows; None when none does."""
    if extent is None:
        extent = (float(w2.min()), float(w2.max())) if w2.size else (0.0, 0.0)
    rows = np.unique(np.linspace(0, w2.shape[0] - 1, LATTICE_SAMPLE_ROWS).astype(np.int64))
    sample = np.asarray(w2[rows], dtype=np.float32)
    best, share = None, LATTICE_SHARE
    for grid in GRIDS:
        if untestable(grid, sample):
            continue
        c = grid.coordinates(sample, extent)
        valid = c.valid & (sample != 0)
        n = int(valid.sum())
        if n == 0:
            continue
        on = float(np.sum(valid & (np.abs(c.q - np.rint(c.q)) < ON_GRID_TOL))) / n
        if on >= share:
            best, share = grid.name, on
    return best


def gap_tensor(
    name: str,
    w: np.ndarray,
    scheme: str,
    n_tests: int,
    lattice: str | None = None,
    extent: tuple[float, float] | None = None,
    rows_lattice: tuple[np.ndarray, np.ndarray] | str | None = "auto",
    distinct: np.ndarray | None = None,
    distinct_share: float | None = None,
    reference: Callable[[], np.ndarray | None] | None = None,
) -> GapResult:
    """Test one float tensor against one quantization grid. Elements on the grid's code
    points (or on those of ``lattice``) are explained and not tested; every other element
    is, however many sit on the grid (no "mostly on grid" shortcut).

    ``reference`` gives the same rows of the trusted tensor in a diff (read only if the
    tensor is flagged): what the deployed tensor shows at the walls is then judged
    against what the same change, shuffled, does to the trusted rows (see
    ``_reference_null``)."""
    w2 = np.ascontiguousarray(w, dtype=np.float32).reshape(w.shape[0] if w.ndim > 1 else 1, -1)
    why = untestable(BY_NAME[scheme], w2)
    if why:
        return GapResult(name, scheme, w.size, 0.0, False, skipped=why)
    mbits = _mantissa_bits(w2)
    if isinstance(rows_lattice, str):
        rows_lattice = row_lattice(w2)
    if rows_lattice is not None:
        # Dequantized codes: the null is simulated on their own lattice (below).
        lattice = None
    # Non-finite weights (a flipped exponent) give non-finite scales: those elements
    # fall out of ``valid``, without a warning per grid.
    with np.errstate(all="ignore"):
        if distinct is None:
            distinct = first_occurrences(w2)
        c = _counts(w2, scheme, mbits, 0, lattice, extent, rows_lattice, distinct)
    total = int(c["n"].sum())
    on_grid = int(c["on_grid"].sum())
    on_frac = on_grid / max(total + on_grid, 1)
    if total < MIN_ELEMENTS:
        why = (
            f"every element but {total} is a code point of {lattice or scheme}"
            if on_grid
            else "too small"
        )
        return GapResult(name, scheme, total, on_frac, False, skipped=why)
    bands = np.asarray(BANDS)
    n_rows = np.repeat(c["n"][:, None], len(BANDS), axis=1)
    nt = n_rows.sum(0)
    inner, outer = c["inner"], c["outer"]
    if mbits < MIN_MANTISSA_BITS or rows_lattice is not None:
        # Low-precision storage or dequantized codes: the null is what benign weights on
        # this lattice show, wall by wall (the lattice can favour or starve either wall).
        p_in = _sim_null(c["sim_inner"].sum(0), nt)
        p_out = _sim_null(c["sim_outer"].sum(0), nt)
        p_in_rows = _sim_null(c["sim_inner"], n_rows)
        p_out_rows = _sim_null(c["sim_outer"], n_rows)
        # The simulation spreads values evenly inside each bin; where the weights'
        # density is steep at the scale of a bin (a Fourier basis near +/-1, the uneven
        # bins of NF4 / FP4) the control grids see that slope, so the larger null is kept.
        ctrl = c["ctrl_sum"].max(axis=0) / np.maximum(nt, 1)
        ctrl_rows = c["ctrl"] / np.maximum(n_rows, 1)
        p_in, p_out = np.maximum(p_in, ctrl), np.maximum(p_out, ctrl)
        p_in_rows = np.maximum(p_in_rows, ctrl_rows)
        p_out_rows = np.maximum(p_out_rows, ctrl_rows)
        if rows_lattice is not None:
            storage = "dequantized codes (even lattice per row or block)"
        else:
            storage = "fp16" if _is_fp16(w2, mbits) else f"{mbits}-bit significand"
    else:
        # Null share per band: uniform, or what control grids show, whichever is larger.
        ctrl = c["ctrl_sum"].max(axis=0) / np.maximum(nt, 1)
        p_in = p_out = np.maximum(bands, ctrl)
        p_in_rows = p_out_rows = np.maximum(bands[None, :], c["ctrl"] / np.maximum(n_rows, 1))
        storage = ""
    threshold = math.log(ALPHA / max(n_tests, 1))
    if distinct_share is None:
        distinct_share = np.unique(w2).size / max(w2.size, 1)
    log_t, log_r = _tails(c, n_rows, (p_in, p_out), (p_in_rows, p_out_rows), distinct_share)
    trusted_rows = (
        reference() if reference is not None and min(log_t.min(), log_r.min()) < threshold else None
    )
    if trusted_rows is not None and trusted_rows.shape[0] == w2.shape[0]:
        # Only when flagged: the reference costs a second pass over the rows.
        ref = _reference_null(trusted_rows, w2, scheme, extent)
        p_in, p_out = np.maximum(p_in, ref[0]), np.maximum(p_out, ref[1])
        p_in_rows, p_out_rows = np.maximum(p_in_rows, ref[2]), np.maximum(p_out_rows, ref[3])
        log_t, log_r = _tails(c, n_rows, (p_in, p_out), (p_in_rows, p_out_rows), distinct_share)
        storage = (storage + "; " if storage else "") + "null includes the shuffled change"
    ti, to = inner.sum(0), outer.sum(0)
    row_hit = (log_r < threshold).any(axis=1)
    best = int(np.argmin(log_t))
    flagged = bool(log_t[best] < threshold) or bool(row_hit.any())
    if not (log_t[best] < threshold) and row_hit.any():
        best = int(np.argmin(log_r[row_hit].min(axis=0)))
    nb = max(int(nt[best]), 1)
    # The active check is evidence for a finding; only flagged tensors need it.
    flip = flip_fraction(w2, scheme) if flagged else 0.0
    return GapResult(
        name,
        scheme,
        total,
        on_frac,
        flagged,
        band=float(bands[best]),
        inner=float(ti[best] / nb),
        outer=float(to[best] / nb),
        expected=float(max(p_in[best], p_out[best])),
        log10_p=float(min(log_t[best], log_r.min(initial=0.0)) / math.log(10)),
        rows=tuple(int(i) for i in np.flatnonzero(row_hit)),
        flip_fraction=flip,
        extra={"storage": storage} if storage else {},
    )


def _tails(
    c: Mapping[str, np.ndarray],
    n_rows: np.ndarray,
    null: tuple[np.ndarray, np.ndarray],
    null_rows: tuple[np.ndarray, np.ndarray],
    distinct_share: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Log tail bounds per band for the whole tensor and per row and band; both walls
    must show the excess (see the module docstring)."""
    nt = n_rows.sum(0)
    inner, outer = c["inner"], c["outer"]
    log_t = np.maximum(_log_tail(inner.sum(0), nt, null[0]), _log_tail(outer.sum(0), nt, null[1]))
    # Values repeated across rows (a shared basis or table, or a coarse storage format)
    # are not independent draws: the evidence scales with the distinct values, not the
    # elements (rows are deduplicated in ``distinct`` already).
    log_t = np.where(nt >= MIN_ELEMENTS, log_t * min(1.0, distinct_share), 0.0)
    # Per row (the attacker may touch some rows only).
    log_r = np.maximum(
        _log_tail(inner, n_rows, null_rows[0]), _log_tail(outer, n_rows, null_rows[1])
    )
    return log_t, np.where(n_rows >= MIN_ROW_ELEMENTS, log_r, 0.0)


REFERENCE_SE = 4.0
"""Standard errors added to the shuffled-change wall shares when they serve as a null."""


def _reference_null(
    trusted: np.ndarray, deployed: np.ndarray, scheme: str, extent: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Wall shares of the trusted rows moved by the same changes shuffled within each row,
    per band for the tensor and per row, as an upper confidence bound.

    A benign change (fine-tune, merge) moves a weight independently of where it sits in
    its bin; a gap attack moves each weight towards its nearest wall. Shuffling the deltas
    keeps what a change of that size does to the trusted weights' own layout (weights at
    arithmetic positions, dequantized from another grid, smeared by the fine-tune) and
    removes only the dependence on position, which is the footprint."""
    t2 = np.ascontiguousarray(trusted, dtype=np.float32).reshape(trusted.shape[0], -1)
    d2 = np.ascontiguousarray(deployed, dtype=np.float32).reshape(t2.shape)
    rng = np.random.default_rng(0)
    with np.errstate(all="ignore"):
        delta = rng.permuted(d2 - t2, axis=1)
        moved = np.where(np.isfinite(delta), t2 + delta, d2).astype(np.float32)
        # Every element counts: the shuffled copy has no meaningful repeats to set aside.
        c = _counts(moved, scheme, _mantissa_bits(moved), 0, None, extent, None, None)
    n_rows = np.repeat(c["n"][:, None], len(BANDS), axis=1).astype(np.float64)
    nt = n_rows.sum(0)

    def bound(k: np.ndarray, n: np.ndarray) -> np.ndarray:
        n = np.maximum(n, 1)
        p = k / n
        return np.minimum(p + REFERENCE_SE * np.sqrt(np.maximum(p, 1 / n) / n), 1 - 1e-9)

    return (
        bound(c["inner"].sum(0), nt),
        bound(c["outer"].sum(0), nt),
        bound(c["inner"], n_rows),
        bound(c["outer"], n_rows),
    )


def flip_fraction(w: np.ndarray, scheme: str, noise: float = NOISE, seed: int = 0) -> float:
    """Active check: the share of codes that change when ``noise`` steps of uniform noise
    are added before rounding (uniform residuals give about ``noise / 2``)."""
    w2 = np.asarray(w, dtype=np.float32).reshape(w.shape[0] if w.ndim > 1 else 1, -1)
    if untestable(BY_NAME[scheme], w2):
        return 0.0
    c = _grid(w2, scheme)
    q, valid = c.q, c.valid
    rng = np.random.default_rng(seed)
    noisy = q + rng.uniform(-noise, noise, size=q.shape).astype(np.float32)
    flips = (np.rint(noisy) != np.rint(q)) & valid
    return float(flips.sum()) / max(int(valid.sum()), 1)


def _float_tensors(art: Artifact) -> Iterator[str]:
    for name, info in art.tensors.items():
        if (
            info.dtype.name in ("F32", "F16", "BF16", "F64")
            and len(info.shape) >= 2
            and info.n_elements >= MIN_ELEMENTS
        ):
            yield name


def _extent(art: Artifact, name: str, v2: np.ndarray) -> tuple[float, float]:
    """(min, max) of a mapped tensor, a row chunk at a time, releasing what was walked."""
    lo, hi = np.inf, -np.inf
    per_row = max(v2.shape[1], 1)
    chunk = max(1, CHUNK_ELEMENTS // per_row)
    row_bytes = per_row * v2.dtype.itemsize
    for r0 in range(0, v2.shape[0], chunk):
        part = np.asarray(v2[r0 : r0 + chunk], dtype=np.float32)
        if part.size:
            lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
        art.release(name, r0 * row_bytes, part.shape[0] * row_bytes)
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def gap_results(
    art: Artifact,
    only: Iterable[str] | None = None,
    rows: Mapping[str, Sequence[int]] | None = None,
    reference: Artifact | None = None,
    reference_names: Mapping[str, str] | None = None,
) -> list[GapResult]:
    """Every float tensor of ``art`` (or those named in ``only``) against every scheme.

    ``rows`` restricts a tensor to some of its rows (axis 0); reported rows keep the
    tensor's own indices. ``reference`` is the trusted artifact of a diff, its tensors
    found under ``reference_names`` (deployed name -> trusted name, default the same).
    """
    wanted = None if only is None else set(only)
    rows = rows or {}
    names = [n for n in _float_tensors(art) if wanted is None or n in wanted]
    picks: dict[str, np.ndarray | None] = {}
    n_tests = 0
    for name in names:
        shape = art.tensors[name].shape
        per_row = max(int(np.prod(shape[1:])), 1)
        picked = np.asarray(rows[name], dtype=np.int64) if name in rows else None
        n_rows = picked.size if picked is not None else shape[0]
        if n_rows * per_row > MAX_TEST_ELEMENTS:
            # Evenly spaced rows (see MAX_TEST_ELEMENTS for the power this keeps).
            keep = max(1, MAX_TEST_ELEMENTS // per_row)
            base = picked if picked is not None else np.arange(shape[0], dtype=np.int64)
            picked = base[np.linspace(0, base.size - 1, keep).astype(np.int64)]
            n_rows = picked.size
        picks[name] = picked
        n_tests += len(SCHEMES) * len(BANDS) * (1 + n_rows)
    out: list[GapResult] = []
    for name in names:
        # The mapped tensor in its storage dtype: only the rows tested (at most
        # MAX_TEST_ELEMENTS) and the lattice sample are converted to float32, and the pages
        # a pass walked are dropped from the mapping, so memory does not grow with the model.
        view = art.array(name)
        v2 = view.reshape(view.shape[0], -1)
        extent = _extent(art, name, v2)
        lattice = lattice_of(v2, extent)
        picked = picks[name]
        w2 = np.asarray(v2 if picked is None else v2[picked], dtype=np.float32)
        art.release(name)
        even = row_lattice(w2)
        distinct = first_occurrences(w2)
        share = np.unique(w2).size / max(w2.size, 1)
        trusted = _trusted_rows(reference, (reference_names or {}).get(name, name), v2, picked)
        # The grids are independent tests of the same rows: numpy releases the GIL in
        # each pass, so they run on every core.
        tests = [
            partial(
                gap_tensor,
                name,
                w2,
                scheme,
                n_tests,
                lattice,
                extent,
                even,
                distinct,
                share,
                trusted,
            )
            for scheme in SCHEMES
        ]
        for result in run_parallel([(1, test) for test in tests]):
            if picked is not None:
                result = replace(result, rows=tuple(int(picked[i]) for i in result.rows))
            if lattice is not None:
                result = replace(result, extra={**result.extra, "lattice": lattice})
            out.append(result)
    return out


def _trusted_rows(
    reference: Artifact | None, name: str, v2: np.ndarray, picked: np.ndarray | None
) -> Callable[[], np.ndarray | None] | None:
    """A reader of the trusted tensor's tested rows, read once on first call; None when
    there is no trusted tensor of the same shape."""
    if reference is None or name not in reference.tensors:
        return None
    if tuple(reference.tensors[name].shape[:1]) != v2.shape[:1]:
        return None
    cache: list[np.ndarray | None] = []

    def read() -> np.ndarray | None:
        if not cache:
            view = reference.array(name)
            t2 = view.reshape(view.shape[0], -1)
            cache.append(
                np.asarray(t2 if picked is None else t2[picked], dtype=np.float32)
                if t2.shape == v2.shape
                else None
            )
            reference.release(name)
        return cache[0]

    return read


def gap_findings(
    art: Artifact,
    artifact_label: str | None = None,
    only: Iterable[str] | None = None,
    rows: Mapping[str, Sequence[int]] | None = None,
    reference: Artifact | None = None,
    reference_names: Mapping[str, str] | None = None,
) -> Iterable[Finding]:
    results = gap_results(art, only, rows, reference, reference_names)
    coverage = coverage_finding(results, artifact_label)
    if coverage is not None:
        yield coverage
    for r in results:
        if not r.flagged:
            continue
        region = Region(axis=0, indices=r.rows[:256]) if r.rows else None
        msg = (
            f"{r.tensor} ({r.scheme}): {r.inner:.1%} of residuals within {r.band:g} of "
            f"the inner wall and {r.outer:.1%} of the outer, expected {r.expected:.1%} "
            f"(log10 p {r.log10_p:.1f}); {len(r.rows)} rows; {r.flip_fraction:.1%} of "
            f"codes flip under {NOISE:g}-step noise (benign about {r.flip_expected:.1%})"
        )
        yield finding(
            QUANT_GAP,
            msg,
            [Location(artifact=artifact_label, tensor=r.tensor, region=region)],
            evidence={
                "scheme": r.scheme,
                "band": r.band,
                "inner": r.inner,
                "outer": r.outer,
                "expected": r.expected,
                "log10_p": r.log10_p,
                "rows": list(r.rows[:256]),
                "rows_total": len(r.rows),
                "flip_fraction": r.flip_fraction,
                "flip_expected": r.flip_expected,
                "elements": r.n,
                "on_grid_fraction": r.on_grid_fraction,
                "storage": r.extra.get("storage", "float32"),
                "null": "simulated storage lattice"
                if r.extra.get("storage")
                else "uniform and control grids",
            },
        )


def coverage_finding(results: Sequence[GapResult], label: str | None) -> Finding | None:
    """One MS410 finding naming the grids not tested, per reason, and the approximate
    grids; None when every grid was tested exactly on every tensor."""
    skipped: dict[str, dict[str, list[str]]] = {}
    for r in results:
        if r.skipped:
            skipped.setdefault(r.scheme, {}).setdefault(r.skipped, []).append(r.tensor)
    approx = sorted({r.scheme for r in results if not BY_NAME[r.scheme].exact})
    if not skipped and not approx:
        return None
    parts = []
    for scheme, reasons in skipped.items():
        for why, names in reasons.items():
            parts.append(f"{scheme}: {len(names)} tensor(s) not tested ({why})")
    if approx:
        parts.append("approximate scales (llama.cpp searches them): " + ", ".join(approx))
    return finding(
        GAP_COVERAGE,
        "; ".join(parts[:12]) + ("; ..." if len(parts) > 12 else ""),
        [Location(artifact=label)],
        evidence={
            "not_tested": {
                s: {why: names[:32] for why, names in reasons.items()}
                for s, reasons in skipped.items()
            },
            "approximate": approx,
            "grids": list(SCHEMES),
        },
    )


def check_quantization_gap(artifact: Artifact) -> Iterable[Finding]:
    """Single-artifact check (``modelseal scan``)."""
    return list(gap_findings(artifact))
