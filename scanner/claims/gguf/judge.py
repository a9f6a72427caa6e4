"""Judge ggml blocks against trusted float rows, element by element and group by group.

Four ways of judging, strictest first (``check.py`` picks one per tensor):

``exact``
    round-to-nearest types that llama.cpp quantizes deterministically (Q8_0 always; Q4_0,
    Q4_1, Q5_0, Q5_1 without an importance matrix): the blocks must be byte for byte what
    llama.cpp's reference quantizer writes.
``nearest``
    every code must be the nearest code of its trusted value under the block's *stored*
    scales. llama.cpp's K-quant and IQ4 quantizers search the scales (with or without an
    importance matrix) and then re-round every code under the stored scales, so a faithful
    block has no other code; a code raised or lowered by one step, or a scale edited
    under unchanged codes, is not nearest any more. Elements clipped at the code range
    must stay within what the scale quantization can explain.
``feasible``
    claimed search algorithms (importance-matrix quantization of the 32-element types,
    ``search``): codes may differ from nearest under the stored scale, but all codes of a
    group must be the nearest codes under *one common* scale (and offset) close to the
    stored one: that is how these algorithms choose them (round under a candidate scale,
    then store the least-squares scale). Codes moved one by one, or concentrated on the
    group's largest weights, fit no common scale.
``codebook``
    lattice types (IQ1, IQ2, IQ3): values are judged by their dequantization error and by
    the signs the codebooks store explicitly.

Every mode also returns per-row figures, so that ``check.py`` can compare each row with
the rest of the file (a row of codes shifted by one step is within one step everywhere,
but its error is far out of line).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scanner.claims.gguf.encoders import quantize_rows
from scanner.claims.gguf.layouts import (
    AFFINE_TYPES,
    DECODED_TYPES,
    GRID_TYPES,
    IQ4_GRID,
    LAYOUTS,
    decode,
    dequantize,
)

TIE = 2.0**-12
"""Rounding ties (in steps): a value this close to a bin wall may round either way."""
F16_REL = 2.0**-10
"""Relative rounding of a float16 scale: codes computed from the unrounded scale (IQ4)
may sit this much (times their magnitude) on the other side of a bin wall."""
FEASIBLE_SCALE = (1 / 3, 3.0)
"""Range of the common scale relative to the stored one. llama.cpp rounds under a
candidate scale within +-11% of the block's range and then stores the least-squares
scale for those codes, which an importance matrix can pull far from the candidate when a
few small weights dominate; the codes with the largest magnitudes pin the common scale
much tighter than this range."""
SIGNED_CODEBOOKS = {"IQ2_XXS": 1, "IQ2_XS": 1, "IQ3_XXS": 1, "IQ2_S": 0, "IQ3_S": 0}
"""Sign mismatches allowed per 8 elements (one flip fixes the parity of the XXS/XS sign
tables; the S types store all eight signs)."""

_MIDPOINTS = (IQ4_GRID[1:] + IQ4_GRID[:-1]) / 2


@dataclass
class ChunkVerdict:
    """What one chunk of rows showed."""

    rows: int
    bad_per_row: np.ndarray
    """Elements violating the mode's rule, per row (int64)."""
    non_nearest_per_row: np.ndarray
    """Codes that are not the nearest under the stored scales (ties excepted)."""
    err_per_row: np.ndarray
    """Sum of squared errors per row: in steps for decoded types, relative to the row's
    energy for codebook types (float64)."""
    n_per_row: int
    samples: list[tuple[int, int, float, float, float]] = field(default_factory=list)
    """(row in chunk, column, expected, found, trusted) of violating elements."""
    blocks_bad: int = 0
    group_err: np.ndarray | None = None
    """Per-group error (mean squared, in steps) for the permissive modes."""


def _row_counts(pos: np.ndarray, per_row: int, rows: int) -> np.ndarray:
    if pos.size == 0:
        return np.zeros(rows, dtype=np.int64)
    return np.bincount(pos // per_row, minlength=rows).astype(np.int64)


SAMPLES = 64


def _samples(
    pos: np.ndarray, per_row: int, expected: np.ndarray, found: np.ndarray, w: np.ndarray
) -> list[tuple[int, int, float, float, float]]:
    """Violating elements to report: the worst of each row first (so that an edit across
    many rows, such as a column, shows where in the row it is even when it changed whole
    blocks), then the others in order, ``SAMPLES`` in all."""
    if pos.size == 0:
        return []
    rows = pos // per_row
    gap = np.nan_to_num(np.abs(np.asarray(expected, np.float64) - found), nan=np.inf)
    order = np.lexsort((-gap, rows))
    firsts = order[np.r_[True, rows[order][1:] != rows[order][:-1]]][:SAMPLES]
    rest = np.setdiff1d(np.arange(min(pos.size, 2 * SAMPLES)), firsts)
    picked = np.concatenate([firsts, rest])[:SAMPLES]
    out = []
    for k in picked:
        r, c = divmod(int(pos[k]), per_row)
        out.append((r, c, float(expected[k]), float(found[k]), float(w[pos[k]])))
    return out


def judge(w: np.ndarray, raw: np.ndarray, type_name: str, mode: str) -> ChunkVerdict:
    """Judge rows ``raw`` (``(rows, row_bytes)`` uint8) against trusted ``w``
    (``(rows, per_row)`` float32) in ``mode``."""
    if mode == "exact":
        return _exact(w, raw, type_name)
    if mode == "codebook":
        return _codebook(w, raw, type_name)
    if type_name not in DECODED_TYPES:
        raise ValueError(f"{type_name} has no decoded codes")
    return _decoded(w, raw, type_name, permissive=mode == "feasible")


# -- exact ---------------------------------------------------------------------------


def _exact(w: np.ndarray, raw: np.ndarray, type_name: str) -> ChunkVerdict:
    rows, per_row = w.shape
    if type_name == "Q8_0":
        bad_blocks, pos, expected, found = _exact_q8_0(w, raw)
    else:
        bad_blocks, pos, expected, found = _exact_reference(w, raw, type_name)
    flat = w.reshape(-1)
    bad = _row_counts(pos, per_row, rows)
    return ChunkVerdict(
        rows,
        bad,
        bad.copy(),
        np.zeros(rows),
        per_row,
        _samples(pos, per_row, expected, found, flat),
        blocks_bad=bad_blocks,
    )


def _exact_q8_0(w: np.ndarray, raw: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """llama.cpp's ``quantize_row_q8_0_ref`` re-derived without a per-block reduction:
    the largest-magnitude element of a faithful block is the one stored as +-127, so the
    candidates for amax are read off the codes; if a larger element hides under another
    code, its code is then wrong and shows up below."""
    x = w.reshape(-1, 32)
    b = raw.reshape(-1, 34)
    nb = x.shape[0]
    codes = np.ascontiguousarray(b[:, 2:34]).view(np.int8)
    d16 = b[:, 0:2].view(np.uint16).reshape(nb)
    flat_codes = codes.reshape(-1)
    amax = _amax_q8_0(x, codes)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    # r = x * id - code: a faithful code is within half a step (r is exact there, the
    # operands being within a factor two), or half a step below (above) a positive
    # (negative) code, as roundf rounds halves away from zero. The scale is repeated to
    # the elements first: a flat product is twice as fast as a broadcast one.
    r = np.multiply(x.reshape(-1), np.repeat(inv, 32))
    r -= flat_codes
    hi, lo = float(r.max(initial=0.0)), float(r.min(initial=0.0))
    if (
        hi > 0.5
        or lo < -0.5
        or (hi == 0.5 and _bad_tie(r, 0.5, flat_codes >= 0))
        or (lo == -0.5 and _bad_tie(r, -0.5, flat_codes <= 0))
    ):
        wrong = _off_codes(r, flat_codes)
    else:
        wrong = np.zeros(0, dtype=np.int64)
    if wrong.size:
        # roundf rounds halves away from zero where rint rounds them to even.
        yw = x.reshape(-1)[wrong] * inv[wrong // 32]
        tr = np.trunc(yw)
        half = np.abs(yw - tr) == 0.5
        fixed = np.where(half, tr + np.sign(yw), np.rint(yw))
        keep = fixed != flat_codes[wrong]
        wrong, fixed = wrong[keep], fixed[keep]
    else:
        fixed = np.zeros(0, dtype=np.float32)
    scale_bad = np.flatnonzero(d.astype(np.float16).view(np.uint16) != d16)
    found = flat_codes[wrong].astype(np.float32)
    if scale_bad.size:
        # A stored scale that llama.cpp would not write: every element of the block is
        # off; report its first element (scale expected vs found).
        extra = scale_bad * 32
        stored = d16[scale_bad].view(np.float16).astype(np.float32)
        wrong = np.concatenate([wrong, extra])
        fixed = np.concatenate([fixed, d[scale_bad]])
        found = np.concatenate([found, stored])
        order = np.argsort(wrong, kind="stable")
        wrong, fixed, found = wrong[order], fixed[order], found[order]
    blocks = np.union1d(np.unique(wrong // 32), scale_bad).size
    return blocks, wrong, fixed, found


_GATHER_BITS = np.uint64(0x0102040810204080)
"""Multiplying eight 0/1 bytes (a little-endian uint64) by this puts byte k's bit at bit
56 + k, with no carries: the 8-lane ``packbits`` in one product."""


def _bad_tie(r: np.ndarray, half: float, wrong_side: np.ndarray) -> bool:
    """Whether an element sits exactly ``half`` a step from its code on the side roundf
    does not round to (ties are common when the trusted values are themselves on a grid,
    as in a requantization)."""
    return bool(np.any((r == half) & wrong_side))


def _off_codes(r: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Positions whose code is not roundf of its value (``r`` = value - code)."""
    far = np.flatnonzero(np.abs(r) >= 0.5)
    rf, cf = r[far], codes[far]
    tie_ok = ((rf == 0.5) & (cf < 0)) | ((rf == -0.5) & (cf > 0))
    return far[~tie_ok]


def _amax_q8_0(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per block, the largest |x| among elements stored as +-127 (a faithful block holds
    its amax there). One bit per element packs each block's candidates into a uint32,
    and the lowest candidate of every block is read off its bit; the few blocks with
    several candidates (elements tied at the block's largest magnitude) are then reduced
    row by row."""
    nb = x.shape[0]
    hit = np.abs(codes) == 127
    packed = (hit.view("<u8") * _GATHER_BITS) >> np.uint64(56)
    bits = packed.astype(np.uint8).view("<u4").reshape(nb)
    amax = np.zeros(nb, dtype=np.float32)
    blocks = np.flatnonzero(bits)
    first = bits[blocks]
    first &= ~first + np.uint32(1)
    lane = np.frexp(first.astype(np.float32))[1] - 1
    amax[blocks] = np.abs(x.reshape(-1)[blocks * 32 + lane])
    several = blocks[bits[blocks] != first]
    if several.size:
        tied = np.where(hit[several], np.abs(x[several]), np.float32(0)).max(axis=1)
        amax[several] = np.maximum(amax[several], tied)
    return amax


def _exact_reference(
    w: np.ndarray, raw: np.ndarray, type_name: str
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    lay = LAYOUTS[type_name]
    expect = quantize_rows(w, type_name).reshape(-1, lay.block_bytes)
    got = raw.reshape(-1, lay.block_bytes)
    bad_blocks = np.flatnonzero((expect != got).any(axis=1))
    if bad_blocks.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return 0, empty, empty.astype(np.float32), empty.astype(np.float32)
    ye = dequantize(expect[bad_blocks], type_name)
    yg = dequantize(got[bad_blocks], type_name)
    diff = ye != yg
    # A block may differ only in bytes that do not change values (a code under a zero
    # scale): it is still not the reference's.
    diff[~diff.any(axis=1), 0] = True
    br, be = np.nonzero(diff)
    pos = bad_blocks[br] * lay.block_elements + be
    return int(bad_blocks.size), pos, ye[br, be], yg[br, be]


# -- nearest / feasible --------------------------------------------------------------


def _positions(
    x: np.ndarray, dec: object, type_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat positions whose code differs from ``rint`` of the scaled trusted value (a
    cheap superset of the non-nearest codes), the scaled values and nearest codes there."""
    step = dec.step  # type: ignore[attr-defined]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(step != 0, np.float32(1) / step, np.float32(0)).astype(np.float32)
    t = x - dec.offset if dec.offset is not None else x.copy()  # type: ignore[attr-defined]
    t *= inv
    if type_name in GRID_TYPES:
        near = np.searchsorted(_MIDPOINTS, t).astype(np.int16)
        pos = np.flatnonzero(near != dec.codes)  # type: ignore[attr-defined]
        return pos, t.reshape(-1)[pos], near.reshape(-1)[pos].astype(np.float32)
    # |t - code| in place; a nearest code is within half a step, so one maximum clears
    # the chunk and only a chunk with candidates pays for their positions.
    t -= dec.codes  # type: ignore[attr-defined]
    np.abs(t, out=t)
    if float(t.max(initial=0.0)) < 0.5 - TIE:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.astype(np.float32), empty.astype(np.float32)
    pos = np.flatnonzero(t.reshape(-1) >= 0.5 - TIE)
    return pos, pos.astype(np.float32), pos.astype(np.float32)


def _scaled_exact(x: np.ndarray, dec: object, pos: np.ndarray, group: int) -> np.ndarray:
    """The scaled value at ``pos`` computed as llama.cpp does, with a division."""
    g = pos // group
    step = dec.step.reshape(-1)[g]  # type: ignore[attr-defined]
    v = x.reshape(-1)[pos]
    if dec.offset is not None:  # type: ignore[attr-defined]
        v = v - dec.offset.reshape(-1)[g]  # type: ignore[attr-defined]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(step != 0, v / step, 0).astype(np.float32)


def _excess(t: np.ndarray, code: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(excess distance of the stored code over the nearest code, nearest code) for
    scaled values ``t``: in steps, or in grid units for IQ4."""
    lay = LAYOUTS[type_name]
    if type_name in GRID_TYPES:
        near = np.searchsorted(_MIDPOINTS, t)
        d_code = np.abs(t - IQ4_GRID[code])
        d_near = np.abs(t - IQ4_GRID[near])
        return d_code - d_near, near.astype(np.float32)
    near = np.clip(np.rint(t), lay.qmin, lay.qmax)
    return np.abs(t - code) - np.abs(t - near), near


def _tie_band(t: np.ndarray, type_name: str) -> np.ndarray:
    if type_name in GRID_TYPES:
        return TIE * 16 + F16_REL * np.abs(t)
    return np.full(t.shape, TIE, dtype=np.float32)


def _clip_bound(dec: object, g: np.ndarray, lay: object) -> np.ndarray:
    """Largest honest error (absolute) of an element clipped at the code range: the
    search may overshoot the range by about a step, and rounding the group scale to an
    integer multiple of the super-block unit shrinks it by up to half a unit per level."""
    step = np.abs(dec.step.reshape(-1)[g])  # type: ignore[attr-defined]
    unit = np.abs(dec.unit.reshape(-1)[g])  # type: ignore[attr-defined]
    levels = lay.qmax - lay.qmin  # type: ignore[attr-defined]
    bound = 1.5 * step + (0.5 * levels * unit if lay.scale_levels else 0)  # type: ignore[attr-defined]
    if dec.offset_unit is not None:  # type: ignore[attr-defined]
        bound = bound + np.abs(dec.offset_unit.reshape(-1)[g])  # type: ignore[attr-defined]
    return bound


def _decoded(w: np.ndarray, raw: np.ndarray, type_name: str, *, permissive: bool) -> ChunkVerdict:
    lay = LAYOUTS[type_name]
    rows, per_row = w.shape
    dec = decode(raw.reshape(-1, lay.block_bytes), type_name)
    x = w.reshape(-1, lay.group)
    pos, _, _ = _positions(x, dec, type_name)
    flat_codes = dec.codes.reshape(-1)
    # Groups under a zero scale dequantize to their offset whatever the code.
    live = dec.step.reshape(-1)[pos // lay.group] != 0
    pos = pos[live]
    t = _scaled_exact(x, dec, pos, lay.group)
    code = flat_codes[pos]
    excess, near = _excess(t, code, type_name)
    tie = excess <= _tie_band(t, type_name)
    pos, t, code, excess, near = pos[~tie], t[~tie], code[~tie], excess[~tie], near[~tie]
    # A code at the rail whose value lies beyond it is clipped, not misrounded.
    if type_name in GRID_TYPES:
        clipped = ((code == 15) & (near == 15)) | ((code == 0) & (near == 0))
    else:
        clipped = ((code == lay.qmax) & (t > lay.qmax)) | ((code == lay.qmin) & (t < lay.qmin))
    non_nearest = pos[~clipped]
    cpos = pos[clipped]
    c_err = np.abs(x.reshape(-1)[cpos] - _value_of(dec, cpos, code[clipped], lay))
    clip_bad = cpos[c_err > _clip_bound(dec, cpos // lay.group, lay)]
    if permissive:
        bad_groups = _infeasible_groups(x, dec, type_name, np.unique(non_nearest // lay.group))
        # Not "within one step": the stored least-squares scale may be a few percent off
        # the candidate the codes were rounded under, which moves the largest codes by
        # more than a step; the common scale is the test.
        code_bad = non_nearest[np.isin(non_nearest // lay.group, bad_groups)]
    else:
        code_bad = non_nearest
    bad = np.union1d(code_bad, clip_bad)
    flat_w = x.reshape(-1)
    # Report the value the nearest code would give next to the stored value.
    expected_values = _value_of(dec, bad, _near_of(bad, pos, near), lay)
    found = _value_of(dec, bad, flat_codes[bad], lay)
    verdict = ChunkVerdict(
        rows,
        _row_counts(bad, per_row, rows),
        _row_counts(non_nearest, per_row, rows),
        np.zeros(rows),
        per_row,
        _samples(bad, per_row, expected_values, found, flat_w),
        blocks_bad=int(np.unique(bad // lay.block_elements).size),
    )
    if permissive:
        err = _steps_error(x, dec, type_name)
        verdict.err_per_row = err.reshape(rows, -1).sum(axis=1, dtype=np.float64)
        verdict.group_err = err.reshape(-1, lay.group).mean(axis=1)
    return verdict


def _near_of(bad: np.ndarray, pos: np.ndarray, near: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(pos, bad)
    idx = np.clip(idx, 0, max(pos.size - 1, 0))
    return near[idx] if pos.size else np.zeros(bad.size, dtype=np.float32)


def _value_of(dec: object, pos: np.ndarray, code: np.ndarray, lay: object) -> np.ndarray:
    g = pos // lay.group  # type: ignore[attr-defined]
    grid = dec.grid  # type: ignore[attr-defined]
    mult = grid[code.astype(np.int64)] if grid is not None else code
    v = dec.step.reshape(-1)[g] * mult  # type: ignore[attr-defined]
    if dec.offset is not None:  # type: ignore[attr-defined]
        v = v + dec.offset.reshape(-1)[g]  # type: ignore[attr-defined]
    return v.astype(np.float32)


def _steps_error(x: np.ndarray, dec: object, type_name: str) -> np.ndarray:
    """Squared error of every element in units of its group's step (grid units / 16 for
    IQ4, whose grid spacing is about 16)."""
    values = dec.values()  # type: ignore[attr-defined]
    step = np.abs(dec.step)  # type: ignore[attr-defined]
    if type_name in GRID_TYPES:
        step = step * 16
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(step != 0, (x - values) / step, 0)
    return (e * e).astype(np.float32)


def _infeasible_groups(
    x: np.ndarray, dec: object, type_name: str, groups: np.ndarray
) -> np.ndarray:
    """Of ``groups`` (holding non-nearest codes), those whose codes are the nearest codes
    under no common scale (and offset) within :data:`FEASIBLE_SCALE` of the stored one."""
    if groups.size == 0:
        return groups
    lay = LAYOUTS[type_name]
    xs = x[groups].astype(np.float64)
    step = dec.step.reshape(-1)[groups].astype(np.float64)[:, None]  # type: ignore[attr-defined]
    codes = dec.codes[groups].astype(np.float64)  # type: ignore[attr-defined]
    if type_name in GRID_TYPES:
        edges = np.concatenate([[-np.inf], _MIDPOINTS, [np.inf]]).astype(np.float64)
        low_edge = edges[codes.astype(np.int64)]
        high_edge = edges[codes.astype(np.int64) + 1]
    else:
        low_edge = np.where(codes <= lay.qmin, -np.inf, codes - 0.5 - TIE)
        high_edge = np.where(codes >= lay.qmax, np.inf, codes + 0.5 + TIE)
    t = xs / step  # value in stored steps; a candidate scale is step / v
    if dec.offset is None:  # type: ignore[attr-defined]
        return groups[~_symmetric_feasible(t, low_edge, high_edge)]
    offset = dec.offset.reshape(-1)[groups].astype(np.float64)[:, None]  # type: ignore[attr-defined]
    return groups[~_affine_feasible(t, offset / step, low_edge, high_edge)]


def _symmetric_feasible(t: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Exists v in FEASIBLE_SCALE with low <= v t <= high for every element."""
    lo_v = np.full(t.shape, -np.inf)
    hi_v = np.full(t.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = t > 0
        neg = t < 0
        lo_v = np.where(pos, low / t, np.where(neg, high / t, lo_v))
        hi_v = np.where(pos, high / t, np.where(neg, low / t, hi_v))
    zero_ok = np.where(t == 0, (low <= 0) & (high >= 0), True).all(axis=1)
    lo = np.nanmax(np.where(np.isnan(lo_v), -np.inf, lo_v), axis=1)
    hi = np.nanmin(np.where(np.isnan(hi_v), np.inf, hi_v), axis=1)
    lo = np.maximum(lo, FEASIBLE_SCALE[0])
    hi = np.minimum(hi, FEASIBLE_SCALE[1])
    return zero_ok & (lo <= hi * (1 + 1e-6))


def _affine_feasible(
    t: np.ndarray, off: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Exists v in FEASIBLE_SCALE and an offset o with low <= v t + o <= high for every
    element. For a fixed v the best o exists iff max(low - v t) <= min(high - v t); that
    gap is convex in v, so a ternary search finds its minimum."""

    def gap(v: np.ndarray) -> np.ndarray:
        vt = v[:, None] * t
        return np.max(low - vt, axis=1) - np.min(high - vt, axis=1)

    a = np.full(t.shape[0], FEASIBLE_SCALE[0])
    b = np.full(t.shape[0], FEASIBLE_SCALE[1])
    for _ in range(48):
        m1 = a + (b - a) / 3
        m2 = b - (b - a) / 3
        left = gap(m1) <= gap(m2)
        b = np.where(left, m2, b)
        a = np.where(left, a, m1)
    del off  # the offset is free: a search algorithm may store a refitted one
    return gap((a + b) / 2) <= 1e-6


# -- codebook ------------------------------------------------------------------------


def _codebook(w: np.ndarray, raw: np.ndarray, type_name: str) -> ChunkVerdict:
    from scanner.dtypes import DTYPES

    rows, per_row = w.shape
    dt = DTYPES[type_name]
    values = dequantize(raw.reshape(-1, dt.block_bytes), type_name).reshape(rows, per_row)
    err = w - values
    # Error of every 32-element group relative to the group's largest weight, averaged
    # over the row: an outlier weight makes its own group coarse, not the row's figure.
    groups = w.reshape(-1, 32)
    peak = np.abs(groups).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(peak > 0, (err.reshape(-1, 32) ** 2).mean(axis=1) / peak**2, 0.0)
    rel = rel.reshape(rows, -1).mean(axis=1, dtype=np.float64) * per_row
    bad_pos = np.zeros(0, dtype=np.int64)
    allowed = SIGNED_CODEBOOKS.get(type_name)
    if allowed is not None:
        flips = ((np.sign(w) * np.sign(values)) < 0).reshape(-1, 8)
        groups = np.flatnonzero(flips.sum(axis=1) > allowed)
        if groups.size:
            g_pos = groups[:, None] * 8 + np.arange(8)
            bad_pos = g_pos[flips[groups]].reshape(-1)
    # No honest quantization puts a value further from its weight than the weight's own
    # block magnitude plus the block's largest stored magnitude.
    blocks_w = np.abs(w).reshape(-1, dt.block_elements).max(axis=1, keepdims=True)
    blocks_v = np.abs(values).reshape(-1, dt.block_elements).max(axis=1, keepdims=True)
    far = np.flatnonzero(np.abs(err).reshape(-1, dt.block_elements) > blocks_w + blocks_v)
    bad_pos = np.union1d(bad_pos, far)
    flat_w = w.reshape(-1)
    flat_v = values.reshape(-1)
    return ChunkVerdict(
        rows,
        _row_counts(bad_pos, per_row, rows),
        np.zeros(rows, dtype=np.int64),
        rel,
        per_row,
        _samples(bad_pos, per_row, flat_w[bad_pos], flat_v[bad_pos], flat_w),
        blocks_bad=int(np.unique(bad_pos // dt.block_elements).size),
    )


def row_error_in_steps(w: np.ndarray, raw: np.ndarray, type_name: str) -> np.ndarray:
    """Mean squared error per row in steps (decoded types), for localizing a re-scan."""
    lay = LAYOUTS[type_name]
    dec = decode(raw.reshape(-1, lay.block_bytes), type_name)
    return (
        _steps_error(w.reshape(-1, lay.group), dec, type_name).reshape(w.shape[0], -1).mean(axis=1)
    )


__all__ = ["AFFINE_TYPES", "ChunkVerdict", "judge"]
