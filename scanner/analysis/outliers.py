"""Localized edits inside (or instead of) a diffuse change, by robust statistics.

A fine-tune, a LoRA merge or a re-save moves a weight matrix diffusely: the size of the
change varies from row to row and column to column (some neurons learn more), but
smoothly, and each element's change is of the size its row and column predict. A hand
edit is a region whose change is far outside that: a row or a column overwritten or
scaled, a block, a few elements. With the delta ``D`` seen as an ``m x n`` matrix:

* row scale ``r_i`` = median_j |D_ij|, column scale ``c_j`` = median_i |D_ij| (medians, so
  a region covering less than half a row or column cannot move them);
* a row (column) is an outlier when its scale is more than ``ROW_RATIO`` times the median
  row scale **and** more than ``ROBUST_Z`` robust standard deviations (1.4826 x MAD of
  the log scales) above it: the second test adapts to fine-tunes whose rows learn at
  very different rates;
* every element's expected size is ``r_i c_j / g`` (``g`` the median |D|: the separable
  model of a gradient update, exact for a rank-1 change), floored at the storage-noise
  bound of the element (:mod:`scanner.analysis.noise`); an element is an outlier when
  ``|D_ij|`` exceeds ``ELEMENT_RATIO`` times that and ``TAIL_FACTOR`` times the 99th
  percentile of all elements' ratios (the tensor's own tail); 16 x 16 tiles are outliers
  when the RMS of their ratios exceeds ``TILE_RATIO`` (and ``TAIL_FACTOR`` times the 99th
  percentile of tile RMS, or a lower quantile when there are so few tiles that the four
  an edited block touches would be the 99th percentile), which finds blocks of moderate
  size element by element;
* thresholds rise (at most to ``SIBLING_CAP`` times the base) to ``SIBLING_FACTOR`` times
  what sibling tensors of the same module type in other layers show, so a fine-tune
  whose every layer has heavy tails is not an edit in each, while an edit in one layer
  still stands out against its siblings.

Everything is one pass over the delta (medians by partition), proportional to its size;
the caller only loads tensors that changed. A change touching few elements is measured
at those elements (its other ratios are zero and most line medians are zero), and the
noise floor's line medians partition one byte of exponent level per element.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scanner.analysis.noise import bound_levels, noise_bound
from scanner.analysis.tensors import TensorPair

ROW_RATIO = 20.0
"""A row (column) scale this many times the median row scale may be an outlier."""
ROBUST_Z = 8.0
"""... when it is also this many robust standard deviations above the median (log scale)."""
ELEMENT_RATIO = 32.0
"""An element this many times its expected size may be an outlier."""
TILE_RATIO = 8.0
"""A 16 x 16 tile whose RMS ratio is this many times the expected size may be an outlier."""
TAIL_FACTOR = 10.0
"""... when it is also this many times the 99th percentile of the tensor's ratios."""
TILE = 16
SIBLING_FACTOR = 2.0
SIBLING_CAP = 8.0
MIN_SIDE = 16
"""A line shorter than this gives no scale of its own (its median is too noisy; a vector
has no column scales)."""
LINE_FLOOR = 8.0
"""A line's scale is taken as at least the median |change| over this: a median of a few
dozen values can land far below the line's typical size by chance."""
REPORTED = 64
SPARSE_UPDATE = 0.05
"""Changed share from which unchanged elements are storage rounding of a small update
rather than the untouched rest of an edited tensor."""


@dataclass(frozen=True)
class Thresholds:
    row: float = ROW_RATIO
    col: float = ROW_RATIO
    element: float = ELEMENT_RATIO
    tile: float = TILE_RATIO


@dataclass(frozen=True, eq=False)
class OutlierProfile:
    """Outlier regions of one tensor's change and the statistics behind them."""

    name: str
    matrix: tuple[int, int]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    tiles: tuple[tuple[int, int], ...]
    """Top-left (row, col) of outlier tiles."""
    elements: tuple[tuple[int, int], ...]
    """(row, col) of outlier elements outside outlier rows, columns and tiles (first few)."""
    n_elements: int
    mask: np.ndarray = field(repr=False)
    box: tuple[int, int, int, int] | None = None
    """Bounding rows/columns ``(r0, r1, c0, c1)`` of the outlier elements, when they are
    clustered (a block edited element by element)."""
    """Elements of the outlier regions (matrix view, local rows)."""
    stats: dict[str, float] = field(default_factory=dict)
    """Largest ratio of each family (row, col, element, tile), for sibling comparison."""
    thresholds: Thresholds = Thresholds()

    @property
    def found(self) -> bool:
        return bool(self.rows or self.cols or self.tiles or self.n_elements)

    def describe(self) -> str:
        parts = []
        if self.rows:
            parts.append(f"rows {_span(self.rows)}")
        if self.cols:
            parts.append(f"columns {_span(self.cols)}")
        if self.tiles:
            shown = ", ".join(f"[{r}:{r + TILE}, {c}:{c + TILE}]" for r, c in self.tiles[:4])
            parts.append(f"{len(self.tiles)} block(s) {shown}")
        if self.n_elements:
            shown = ", ".join(f"({r}, {c})" for r, c in self.elements[:6])
            where = ""
            if self.box is not None and self.n_elements > 1:
                r0, r1, c0, c1 = self.box
                where = f" in block rows {r0}:{r1} x columns {c0}:{c1};"
            parts.append(f"{self.n_elements} element(s){where} {shown}")
        return "; ".join(parts)

    def evidence(self) -> dict[str, object]:
        return {
            "outlier_rows": list(self.rows[:REPORTED]),
            "outlier_cols": list(self.cols[:REPORTED]),
            "outlier_blocks": [list(t) for t in self.tiles[:REPORTED]],
            "outlier_elements": [list(e) for e in self.elements[:REPORTED]],
            "n_outlier_elements": self.n_elements,
            "outlier_element_block": list(self.box) if self.box else None,
            "matrix_view": list(self.matrix),
            "max_ratios": {k: round(min(v, 1e12), 2) for k, v in self.stats.items()},
            "thresholds": {k: round(v, 2) for k, v in self.thresholds.__dict__.items()},
        }


def _span(idx: tuple[int, ...]) -> str:
    shown = ", ".join(map(str, idx[:8]))
    return f"[{shown}{', ...' if len(idx) > 8 else ''}] ({len(idx)})"


def matrix_view(pair: TensorPair) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as ``m x n`` float arrays: leading axes of size 1 dropped (an ONNX LSTM's
    ``[1, 4H, I]`` is its ``4H x I`` matrix), the rest flattened into columns; a vector
    is one row."""
    if pair.complete:
        shape = list(pair.shape)
        while len(shape) > 1 and shape[0] == 1:
            shape.pop(0)
        m = shape[0] if len(shape) > 1 else 1
    else:
        m = pair.trusted.shape[0]
    a = pair.trusted.reshape(m, -1)
    return a, pair.deployed.reshape(a.shape)


def module_type(name: str) -> str:
    """The name with its layer numbers blanked: siblings share it."""
    return re.sub(r"\d+", "#", name)


@dataclass(frozen=True)
class _Scales:
    ratio: np.ndarray
    row_scale: np.ndarray
    col_scale: np.ndarray
    row_floor: np.ndarray
    col_floor: np.ndarray
    at: np.ndarray | None = None
    """For a sparse change: the flat positions of the changed elements (sorted), the
    only ones whose ratio can be nonzero."""


def _scales(
    a: np.ndarray,
    b: np.ndarray,
    dtype: str,
    changed: np.ndarray,
    bits: tuple[np.ndarray, np.ndarray] | None = None,
) -> _Scales:
    # float32 throughout: these are statistics, and float32 halves the memory traffic
    m, n = a.shape
    frac = float(np.mean(changed))
    if frac < SPARSE_UPDATE:
        sparse = _sparse_scales(a, b, dtype, changed, bits)
        if sparse is not None:
            return sparse
    absd = np.abs(b - a, dtype=np.float32)
    floor = noise_bound(a, b, dtype)
    # Narrow storage (BF16, F16) leaves a small update visible only where the weight is
    # small enough for it to cross a rounding step: the medians then come from the
    # elements that moved. A change touching few elements keeps the zeros, so the
    # unchanged rest of the tensor is what an edit is measured against.
    if SPARSE_UPDATE <= frac < 0.9:
        g, row, col = _nan_medians(np.where(changed, absd, np.nan))
    elif np.isnan(absd).any():
        g, row, col = _nan_medians(absd)
    else:
        g, row, col = _medians_with_zeros(absd)
    row_floor, col_floor = _floor_medians(a, b, dtype, floor, bits)
    row, col = _line_scales(row, col, g, m, n)
    row_model = np.maximum(row, g / LINE_FLOOR)
    col_model = np.maximum(col, g / LINE_FLOOR)
    # With most elements unchanged (g = 0) each side's scale counts alone.
    expected = (
        np.outer(row_model, col_model) / g if g > 0 else np.maximum(row[:, None], col[None, :])
    )
    expected = np.maximum(expected, floor)
    return _Scales(absd / expected, row, col, row_floor, col_floor)


def _sparse_scales(
    a: np.ndarray,
    b: np.ndarray,
    dtype: str,
    changed: np.ndarray,
    bits: tuple[np.ndarray, np.ndarray] | None = None,
) -> _Scales | None:
    """:func:`_scales` of a change touching few elements, computed at those elements.

    With fewer than half of all elements changed the median change ``g`` is 0, a line's
    median is 0 unless half of it changed, and an unchanged element's ratio is 0: only
    the changed elements, the few lines at least half changed and the floors' line
    medians need the whole tensor. Equal to the dense computation; None (use that) when
    a changed value is not a number."""
    m, n = a.shape
    at = np.flatnonzero(changed)
    a_at, b_at = a.reshape(-1)[at], b.reshape(-1)[at]
    d = np.abs(b_at - a_at, dtype=np.float32)
    if np.isnan(d).any():
        return None
    r, c = np.divmod(at, n)
    moved = d != 0

    def absd_of(pick: tuple[Any, Any]) -> np.ndarray:
        return np.abs(b[pick] - a[pick], dtype=np.float32)

    row = _half_changed_line_medians(absd_of, np.bincount(r[moved], minlength=m), n, axis=1)
    col = _half_changed_line_medians(absd_of, np.bincount(c[moved], minlength=n), m, axis=0)
    row, col = _line_scales(row, col, 0.0, m, n)
    row_floor, col_floor = _floor_medians(a, b, dtype, None, bits)
    expected = np.maximum(np.maximum(row[r], col[c]), noise_bound(a_at, b_at, dtype))
    ratio = np.zeros((m, n), dtype=np.float32)
    ratio.reshape(-1)[at] = d / expected
    return _Scales(ratio, row, col, row_floor, col_floor, at)


def _half_changed_line_medians(
    absd_of: Callable[[tuple[Any, Any]], np.ndarray], nonzero: np.ndarray, length: int, axis: int
) -> np.ndarray:
    """Median |b - a| of each line (``axis=1`` rows), given each line's count of nonzero
    changes and how to read the |b - a| of some lines: a line with fewer than half
    nonzero has median 0 (its sorted middle is a zero), so only the others are read."""
    out = np.zeros(nonzero.shape, dtype=np.float32)
    dense = np.flatnonzero(2 * nonzero >= length)
    if dense.size:
        pick = (dense, slice(None)) if axis == 1 else (slice(None), dense)
        out[dense] = np.median(absd_of(pick), axis=axis)
    return out


def _line_scales(
    row: np.ndarray, col: np.ndarray, g: float, m: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Line scales, with the tensor's median standing in for lines too short to have
    their own."""
    if n < MIN_SIDE:
        row = np.full(m, g)
    if m < MIN_SIDE:
        col = np.full(n, g)
    return np.nan_to_num(row), np.nan_to_num(col)


def _floor_medians(
    a: np.ndarray,
    b: np.ndarray,
    dtype: str,
    floor: np.ndarray | None,
    bits: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Median noise floor of each row and column (the largest, for lines shorter than
    ``MIN_SIDE``): partitions of one byte per element where the floor has exponent
    levels, of the float floor otherwise."""
    m, n = a.shape
    levelled = bound_levels(a, b, dtype, bits)
    if levelled is None:
        floor = noise_bound(a, b, dtype) if floor is None else floor
        return (
            _line_median_or_max(floor, 1, n >= MIN_SIDE),
            _line_median_or_max(floor, 0, m >= MIN_SIDE),
        )
    levels, values = levelled
    return (
        _level_median_or_max(levels, values, 1, n >= MIN_SIDE),
        _level_median_or_max(levels, values, 0, m >= MIN_SIDE),
    )


def _line_median_or_max(x: np.ndarray, axis: int, long_lines: bool) -> np.ndarray:
    return np.median(x, axis=axis) if long_lines else x.max(axis=axis)


def _level_median_or_max(
    levels: np.ndarray, values: np.ndarray, axis: int, long_lines: bool
) -> np.ndarray:
    """``np.median(values[levels], axis)`` (or the max) from the levels: the values
    increase with the level, so the middle levels name the middle values."""
    if not long_lines:
        return values[levels.max(axis=axis)]
    length = levels.shape[axis]
    lo_k, hi_k = (length - 1) // 2, length // 2
    part = np.partition(levels, sorted({lo_k, hi_k}), axis=axis)
    lo = values[np.take(part, lo_k, axis=axis)]
    if lo_k == hi_k:
        return lo
    # np.median averages the middle pair in the input's precision
    return (lo + values[np.take(part, hi_k, axis=axis)]) / np.float32(2)


def _nan_medians(stat: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Medians of the non-NaN elements: whole tensor, each row, each column."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = float(np.nan_to_num(np.nanmedian(stat)))
        return g, np.nanmedian(stat, axis=1), np.nanmedian(stat, axis=0)


def _medians_with_zeros(absd: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Medians of ``absd`` (whole tensor, rows, columns), unchanged zeros included; a
    line with fewer than half its elements nonzero is not partitioned (its median is 0)."""
    nonzero = absd != 0
    g = 0.0 if 2 * np.count_nonzero(nonzero) < absd.size else float(np.median(absd))
    m, n = absd.shape

    def absd_of(pick: tuple[Any, Any]) -> np.ndarray:
        return absd[pick]

    rows = _half_changed_line_medians(absd_of, np.count_nonzero(nonzero, axis=1), n, axis=1)
    cols = _half_changed_line_medians(absd_of, np.count_nonzero(nonzero, axis=0), m, axis=0)
    return g, rows, cols


def _line_ratios(scale: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, float]:
    """Ratio of each line's scale to the median line scale, and the robust-z bound.

    The spread only adapts the bound when most lines really moved: where most sit at
    the storage-noise floor, the floor's variation says nothing about how training
    spreads a change."""
    s = np.maximum(scale, floor)
    logs = np.log(s)
    center = float(np.median(logs))
    spread = 1.0
    if np.mean(scale > floor) > 0.5:
        mad = 1.4826 * float(np.median(np.abs(logs - center)))
        spread = math.exp(ROBUST_Z * mad)
    return s / math.exp(center), spread


def _quantile_of_nonnegative(x: np.ndarray, q: float, nonzero: int | None = None) -> float:
    """``np.quantile(x, q)`` of values >= 0, without a partition when fewer than
    ``1 - q`` of them are nonzero (``nonzero``, when the caller knows it): both elements
    the quantile interpolates between are then zeros."""
    if nonzero is None:
        nonzero = int(np.count_nonzero(x))
    if nonzero < (1.0 - q) * (x.size - 1):
        return 0.0
    return float(np.quantile(x, q))


def _tiles(ratio: np.ndarray) -> np.ndarray:
    m, n = ratio.shape
    mt, nt = m // TILE, n // TILE
    sq = np.square(ratio[: mt * TILE, : nt * TILE])
    return np.sqrt(sq.reshape(mt, TILE, nt, TILE).mean(axis=(1, 3)))


def _sparse_tiles(
    at: np.ndarray,
    values: np.ndarray,
    lone: np.ndarray,
    flat_mask: np.ndarray,
    m: int,
    n: int,
) -> np.ndarray:
    """:func:`_tiles` of a ratio that is zero but at the flat positions ``at``
    (``values`` there), without the ``lone`` positions and those in ``flat_mask``."""
    mt, nt = m // TILE, n // TILE
    keep = ~flat_mask[at]
    keep[np.searchsorted(at, lone)] = False
    r, c = np.divmod(at[keep], n)
    inside = (r < mt * TILE) & (c < nt * TILE)
    tile = (r[inside] // TILE) * nt + c[inside] // TILE
    sq = np.square(values[keep][inside], dtype=np.float64)
    sums = np.bincount(tile, weights=sq, minlength=mt * nt)
    return np.sqrt(sums / (TILE * TILE)).astype(np.float32).reshape(mt, nt)


TAIL_TILES = 4
"""Tiles one edited block can reach: a 16 x 16 block off the tile grid touches four."""


def _tile_tail_quantile(n_tiles: int) -> float:
    """The quantile of tile RMS the tail test compares with: the 99th, but never so high
    that the tiles of one edited block are the reference (a 200 x 50 matrix has 36
    tiles, whose 99th percentile is the largest)."""
    return max(0.5, min(0.99, 1.0 - (TAIL_TILES + 1) / max(n_tiles, 1)))


def outlier_profile(pair: TensorPair, limits: Thresholds | None = None) -> OutlierProfile:
    """Outlier rows, columns, tiles and elements of ``pair``'s change."""
    limits = limits or Thresholds()
    a, b = matrix_view(pair)
    m, n = a.shape
    bits = (pair.trusted_bits.reshape(a.shape), pair.deployed_bits.reshape(a.shape))
    sc = _scales(a, b, pair.dtype, pair.changed.reshape(a.shape), bits)
    stats: dict[str, float] = {}
    mask = np.zeros((m, n), dtype=bool)
    rows: tuple[int, ...] = ()
    cols: tuple[int, ...] = ()
    if n >= MIN_SIDE and m >= 2:
        ratio, spread = _line_ratios(sc.row_scale, sc.row_floor)
        stats["row"] = float(ratio.max())
        hit = np.flatnonzero((ratio > max(limits.row, spread)) & (sc.row_scale > sc.row_floor))
        if hit.size and hit.size <= m // 2:
            rows = tuple(pair.row_index(i) for i in hit)
            mask[hit] = True
    if m >= MIN_SIDE and n >= 2:
        ratio, spread = _line_ratios(sc.col_scale, sc.col_floor)
        stats["col"] = float(ratio.max())
        hit = np.flatnonzero((ratio > max(limits.col, spread)) & (sc.col_scale > sc.col_floor))
        if hit.size and hit.size <= n // 2:
            cols = tuple(int(j) for j in hit)
            mask[:, hit] = True
    # Element and tile outliers at the changed elements when the change is sparse (an
    # unchanged element's ratio is 0), over the whole ratio otherwise.
    flat_mask = mask.reshape(-1)
    if sc.at is not None:
        at = sc.at
        values = sc.ratio.reshape(-1)[at]
    else:
        at = None
        values = sc.ratio.reshape(-1)
    stats["element"] = float(values.max(initial=0.0))
    nonzero = int(np.count_nonzero(values))
    tail = TAIL_FACTOR * _quantile_of_nonnegative(sc.ratio, 0.99, nonzero)
    lone = np.flatnonzero(values > max(limits.element, tail))
    if at is not None:
        lone = at[lone]
    lone = lone[~flat_mask[lone]]
    tiles: tuple[tuple[int, int], ...] = ()
    if m >= TILE and n >= TILE:
        # Tiles are judged without the lone outlier elements: one element set to 40 is
        # an element, not a block; a block is many elements each moderately too large.
        if at is not None:
            t = _sparse_tiles(at, values, lone, flat_mask, m, n)
        else:
            excluded = mask.copy()
            excluded.reshape(-1)[lone] = True
            t = _tiles(np.where(excluded, 0.0, sc.ratio))
        stats["tile"] = float(t.max())
        tail_t = TAIL_FACTOR * float(np.quantile(t, _tile_tail_quantile(t.size)))
        for r, c in np.argwhere(t > max(limits.tile, tail_t)):
            block = (slice(r * TILE, (r + 1) * TILE), slice(c * TILE, (c + 1) * TILE))
            mask[block] = True
            tiles += ((pair.row_index(r * TILE), int(c * TILE)),)
    lone = lone[~flat_mask[lone]]
    idx = np.column_stack(np.divmod(lone, n)) if lone.size else np.zeros((0, 2), np.intp)
    flat_mask[lone] = True
    elements = tuple((pair.row_index(r), int(c)) for r, c in idx[:REPORTED])
    box = None
    if idx.shape[0]:
        r0, c0 = idx.min(axis=0)
        r1, c1 = idx.max(axis=0) + 1
        if (r1 - r0) * (c1 - c0) <= max(TILE * TILE * 4, 0.01 * m * n):
            box = (pair.row_index(r0), pair.row_index(r1 - 1) + 1, int(c0), int(c1))
    return OutlierProfile(
        pair.name,
        (m, n),
        rows,
        cols,
        tiles,
        elements,
        int(idx.shape[0]),
        mask,
        box,
        stats,
        limits,
    )


def sibling_thresholds(
    stats: Mapping[str, Mapping[str, float]], name: str, groups: Mapping[str, list[str]]
) -> Thresholds:
    """Thresholds for ``name`` raised to what its siblings (same module type and shape,
    other layers) show: ``SIBLING_FACTOR`` x their median largest ratio, at most
    ``SIBLING_CAP`` x the base."""
    base = Thresholds()
    peers = [p for p in groups.get(name, []) if p != name and p in stats]
    if len(peers) < 2:
        return base
    raised = {}
    for family, value in base.__dict__.items():
        seen = [stats[p][family] for p in peers if family in stats[p]]
        if not seen:
            raised[family] = value
            continue
        typical = float(np.median(seen))
        raised[family] = min(max(value, SIBLING_FACTOR * typical), SIBLING_CAP * value)
    return replace(base, **raised)
