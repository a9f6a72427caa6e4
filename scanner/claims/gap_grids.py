"""Quantization grids the gap check tests: each maps a 2-D float tensor to code
coordinates, where code points are the integers and bin walls the half-integers.

Covered (every commonly deployed weight grid):
- int8 symmetric (scale ``amax / 127``) and uint8 asymmetric (scale ``(max - min) / 255``,
  zero point ``round(-min / scale)``, range widened to hold 0 as PyTorch/ONNX do), each per
  tensor and per channel (row);
- ggml blocks of 32: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, exactly as llama.cpp's reference
  (fp16 block scales and mins);
- K-quants, approximately: Q4_K and Q5_K (8 sub-blocks of 32, 6-bit sub-scales and mins
  under fp16 super-scales) and Q6_K (16 sub-blocks of 16, int8 sub-scales) with the
  plain scales of ``scanner.claims.gguf.encoders``. llama.cpp searches its K-quant scales,
  so its walls can sit up to a fraction of a step away from these: a gap attack aimed at
  llama.cpp's exact walls is seen with less power than on the exact grids;
- bitsandbytes NF4 and FP4, blocks of 64 (absmax per block). Their code values are not
  evenly spaced: the coordinate is piecewise linear between sorted code values, so each
  wall (a midpoint of two code values) sits at a half-integer.

A grid needs every row to be a whole number of its blocks; otherwise it is not tested
and the reason is reported (llama.cpp stores such tensors in another type; bitsandbytes
blocks run across rows there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scanner.claims.bnb import FP4, NF4

Mapping = Callable[[np.ndarray], np.ndarray]
Extent = tuple[float, float]


@dataclass(frozen=True)
class Coordinates:
    q: np.ndarray
    """Code coordinate of every element (float32, same shape as the input)."""
    valid: np.ndarray
    """Elements tested: not those that set a scale, and not clipped at the range ends."""
    to_value: Mapping
    """Code coordinate -> weight value (element-wise, for the input's shape)."""
    to_code: Mapping
    """Weight value -> code coordinate."""


@dataclass(frozen=True)
class Grid:
    name: str
    block: int
    """Elements per scale group along a row (0: the whole row or tensor)."""
    exact: bool
    """False for grids whose scales are an approximation of the quantizer's search."""
    coordinates: Callable[[np.ndarray, Extent], Coordinates]
    """(rows, extent) -> coordinates; ``extent`` is the whole tensor's (min, max), which
    per-tensor grids use when given a part of the rows."""


def _linear(w2: np.ndarray, step: np.ndarray, zero: np.ndarray, lo: float, hi: float):
    """``q = w / step + zero`` with codes in [lo, hi]; elements within half a step of the
    range ends are the ones that set the scale."""
    step = np.where(step != 0, step, np.float32(1.0)).astype(np.float32)
    zero = np.asarray(zero, dtype=np.float32)
    q = (w2 / step + zero).astype(np.float32, copy=False)
    valid = (q > lo + 0.5) & (q < hi - 0.5)
    return Coordinates(
        q,
        valid,
        lambda x: ((x - zero) * step).astype(np.float32, copy=False),
        lambda v: (v / step + zero).astype(np.float32, copy=False),
    )


def _blocks(w2: np.ndarray, size: int) -> np.ndarray:
    return w2.reshape(w2.shape[0], -1, size)


def _reshaped(c: Coordinates, shape: tuple[int, ...]) -> Coordinates:
    blk = c.q.shape
    return Coordinates(
        c.q.reshape(shape),
        c.valid.reshape(shape),
        lambda x: c.to_value(x.reshape(blk)).reshape(shape),
        lambda v: c.to_code(v.reshape(blk)).reshape(shape),
    )


def _f16(x: np.ndarray) -> np.ndarray:
    # Scales beyond fp16 (non-finite or huge weights) become inf, as in a ggml file.
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(np.float32)


def int8_symmetric(per_row: bool) -> Callable[[np.ndarray, Extent], Coordinates]:
    def coords(w2: np.ndarray, extent: Extent) -> Coordinates:
        whole = np.float32(max(-extent[0], extent[1]))
        amax = np.abs(w2).max(axis=1, keepdims=True) if per_row else whole
        return _linear(w2, np.asarray(amax / np.float32(127.0)), np.float32(0.0), -127, 127)

    return coords


def uint8_asymmetric(per_row: bool) -> Callable[[np.ndarray, Extent], Coordinates]:
    def coords(w2: np.ndarray, extent: Extent) -> Coordinates:
        if per_row:
            lo = np.minimum(w2.min(axis=1, keepdims=True), 0.0)
            hi = np.maximum(w2.max(axis=1, keepdims=True), 0.0)
        else:
            lo, hi = np.float32(min(extent[0], 0.0)), np.float32(max(extent[1], 0.0))
        step = np.asarray((hi - lo) / np.float32(255.0), dtype=np.float32)
        safe = np.where(step > 0, step, np.float32(1.0))
        zero = np.clip(np.rint(-lo / safe), 0, 255).astype(np.float32)
        return _linear(w2, step, zero, 0, 255)

    return coords


def ggml_symmetric(levels: int, max_based: bool) -> Callable[[np.ndarray, Extent], Coordinates]:
    """Q8_0 (``amax / 127``) and Q4_0 / Q5_0 (``max / -2^(bits-1)``, the signed extreme)."""

    def coords(w2: np.ndarray, extent: Extent) -> Coordinates:
        b = _blocks(w2, 32)
        if max_based:
            # d carries the sign of the extreme element, which sits at code -levels.
            imax = np.abs(b).argmax(axis=2)[..., None]
            d = _f16(np.take_along_axis(b, imax, axis=2) / np.float32(-levels))
        else:
            d = _f16(np.abs(b).max(axis=2, keepdims=True) / np.float32(levels))
        c = _linear(b, d, np.float32(0.0), -levels, levels)
        return _reshaped(c, w2.shape)

    return coords


def ggml_affine(levels: int) -> Callable[[np.ndarray, Extent], Coordinates]:
    """Q4_1 / Q5_1: ``d = (max - min) / levels``, ``m = min``, code ``round((w - m) / d)``."""

    def coords(w2: np.ndarray, extent: Extent) -> Coordinates:
        b = _blocks(w2, 32)
        lo = b.min(axis=2, keepdims=True)
        d = _f16((b.max(axis=2, keepdims=True) - lo) / np.float32(levels))
        m = _f16(lo)
        safe = np.where(d > 0, d, np.float32(1.0))
        return _reshaped(_linear(b, d, -m / safe, 0, levels), w2.shape)

    return coords


def k_quant(name: str) -> Callable[[np.ndarray, Extent], Coordinates]:
    """Q4_K / Q5_K / Q6_K with plain (unsearched) scales, as ``gguf.encoders`` writes."""

    def coords(w2: np.ndarray, extent: Extent) -> Coordinates:
        if name == "q6_k":
            x = w2.reshape(w2.shape[0], -1, 16, 16)
            sub = np.abs(x).max(axis=3) / np.float32(31.0)
            d = _f16(sub.max(axis=2, keepdims=True) / np.float32(127.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                sc = np.where(d > 0, np.rint(sub / d), 0).clip(-128, 127)
            step = (d * sc)[..., None].astype(np.float32)
            c = _linear(x, step, np.float32(0.0), -32, 31)
            return _reshaped(c, w2.shape)
        levels = 15 if name == "q4_k" else 31
        x = w2.reshape(w2.shape[0], -1, 8, 32)
        lo = np.minimum(x.min(axis=3), 0.0)
        scale = (x.max(axis=3) - lo) / np.float32(levels)
        d = _f16(scale.max(axis=2, keepdims=True) / np.float32(63.0))
        dm = _f16((-lo).max(axis=2, keepdims=True) / np.float32(63.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            sc = np.where(d > 0, np.rint(scale / d), 0).clip(0, 63)
            mn = np.where(dm > 0, np.rint(-lo / dm), 0).clip(0, 63)
        step = (d * sc)[..., None].astype(np.float32)
        off = (dm * mn)[..., None].astype(np.float32)
        safe = np.where(step > 0, step, np.float32(1.0))
        return _reshaped(_linear(x, step, off / safe, 0, levels), w2.shape)

    return coords


class _PiecewiseLinear:
    """Code coordinate <-> value through sorted code values, in float32: ``np.interp``
    without its float64 copies and per-element binary search. A uniform table of cells,
    each narrower than the smallest gap between code values, gives an element's segment
    up to one comparison."""

    def __init__(self, values: np.ndarray) -> None:
        # Sorted and deduplicated by hand: np.unique imports numpy.ma (10 ms at start-up,
        # as these tables are built when the module loads).
        v = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
        v = v[np.concatenate(([True], v[1:] != v[:-1]))]
        self.size = v.size
        gaps = np.diff(v)
        self.cells = int(np.ceil(2 * (v[-1] - v[0]) / gaps.min()))
        self.origin = np.float32(v[0])
        self.scale = np.float32(self.cells / (v[-1] - v[0]))
        left = v[0] + np.arange(self.cells) / float(self.scale)
        self.segment = np.clip(np.searchsorted(v, left, side="right") - 1, 0, v.size - 2)
        self.segment = self.segment.astype(np.intp)
        self.values = v.astype(np.float32)
        self.width = gaps.astype(np.float32)
        self.inverse = (1.0 / gaps).astype(np.float32)

    def to_code(self, x: np.ndarray) -> np.ndarray:
        """``np.interp(x, values, arange(size))``: clamped to [0, size - 1]."""
        cell = (x - self.origin) * self.scale
        np.clip(cell, 0, self.cells - 1, out=cell)
        j = self.segment[cell.astype(np.intp)]
        j += x >= self.values[j + 1]
        np.minimum(j, self.size - 2, out=j)
        q = x - self.values[j]
        q *= self.inverse[j]
        q += j
        return np.clip(q, 0, self.size - 1, out=q)

    def to_value(self, t: np.ndarray) -> np.ndarray:
        """``np.interp(t, arange(size), values)``: clamped to the end values."""
        t = np.clip(t, 0, self.size - 1).astype(np.float32, copy=False)
        j = np.minimum(t.astype(np.intp), self.size - 2)
        x = t - j
        x *= self.width[j]
        x += self.values[j]
        return x


def codebook(values: np.ndarray, block: int) -> Callable[[np.ndarray, Extent], Coordinates]:
    """bitsandbytes 4-bit: ``x = w / absmax`` per block of ``block``, bucketed by the
    midpoints of the sorted code values; the coordinate is piecewise linear between code
    values, so walls (midpoints) are half-integers."""
    line = _PiecewiseLinear(values)

    def coords(w2: np.ndarray, extent: Extent) -> Coordinates:
        b = _blocks(w2, block)
        am = np.abs(b).max(axis=2, keepdims=True)
        am = np.where(am > 0, am, np.float32(1.0)).astype(np.float32)

        def to_code(v: np.ndarray) -> np.ndarray:
            return line.to_code(v.reshape(b.shape) / am).reshape(v.shape)

        def to_value(t: np.ndarray) -> np.ndarray:
            x = line.to_value(t.reshape(b.shape))
            x *= am
            return x.reshape(t.shape)

        q = to_code(w2)
        valid = (q > 0.5) & (q < line.size - 1.5)
        return Coordinates(q, valid, to_value, to_code)

    return coords


GRIDS: tuple[Grid, ...] = (
    Grid("int8-per-channel", 0, True, int8_symmetric(per_row=True)),
    Grid("int8-per-tensor", 0, True, int8_symmetric(per_row=False)),
    Grid("uint8-asym-per-channel", 0, True, uint8_asymmetric(per_row=True)),
    Grid("uint8-asym-per-tensor", 0, True, uint8_asymmetric(per_row=False)),
    Grid("q8_0", 32, True, ggml_symmetric(127, max_based=False)),
    Grid("q4_0", 32, True, ggml_symmetric(8, max_based=True)),
    Grid("q5_0", 32, True, ggml_symmetric(16, max_based=True)),
    Grid("q4_1", 32, True, ggml_affine(15)),
    Grid("q5_1", 32, True, ggml_affine(31)),
    Grid("q4_k", 256, False, k_quant("q4_k")),
    Grid("q5_k", 256, False, k_quant("q5_k")),
    Grid("q6_k", 256, False, k_quant("q6_k")),
    Grid("nf4", 64, True, codebook(NF4, 64)),
    Grid("fp4", 64, True, codebook(FP4, 64)),
)
BY_NAME = {g.name: g for g in GRIDS}


def untestable(grid: Grid, w2: np.ndarray) -> str:
    """Why ``grid`` cannot be tested on ``w2`` (empty when it can)."""
    if grid.block and w2.shape[1] % grid.block:
        return f"rows of {w2.shape[1]} elements are not a multiple of {grid.block}"
    return ""
