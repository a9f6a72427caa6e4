"""Bit-exact cast verification: which deployed elements are not the round-to-nearest-even
conversion of the trusted ones.

A cast that is exact needs nothing else (no float statistics, no float64 copies), so this
is the first and usually only pass over a cast tensor. It works on storage bits:

* F16 -> BF16 and BF16 -> F16, the casts of half-precision checkpoints, are computed with
  16-bit integer arithmetic on the bit patterns (about five times the speed of numpy's
  float conversion on this data). The arithmetic is only valid for elements whose
  exponent the two formats share (normal numbers in range); zeros, subnormals, infinities,
  NaN and out-of-range exponents are flagged and re-checked exactly, as are the elements
  whose fast result differs, so the answer is always that of the exact conversion.
* every other pair converts with numpy / ml_dtypes, exactly as ``astype`` does.

Both NaN counts as equal (NaN payloads are not preserved by conversions).
"""

from __future__ import annotations

import numpy as np

_U16 = np.dtype(np.uint16)


def _f16_to_bf16(a: np.ndarray, b: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Mask of elements to re-check exactly: the fast F16 -> BF16 result differs from
    ``b`` or the element is special (exponent field 0 or 31). ``x`` and ``t`` are uint16
    scratch buffers of ``a``'s length (in-place operations: no allocation per chunk)."""
    np.bitwise_and(a, 0x7FFF, out=x)
    # Round the 10-bit significand to 7 bits, nearest even; a carry runs into the exponent.
    np.right_shift(x, 3, out=t)
    np.bitwise_and(t, 1, out=t)
    t += np.uint16(3)
    x += t
    x >>= np.uint16(3)
    x += np.uint16(112 << 7)  # exponent bias 15 -> 127
    np.bitwise_and(a, 0x8000, out=t)
    x |= t
    flagged = np.not_equal(x, b)
    np.bitwise_and(a, 0x7C00, out=t)
    t -= np.uint16(0x0400)  # wraps: exponent 0 -> 0xFC00, exponent 31 -> 0x7800
    flagged |= t >= np.uint16(0x7800)
    return flagged


def _bf16_to_f16(a: np.ndarray, b: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Mask of elements to re-check exactly for BF16 -> F16: the fast result differs or
    the exponent is outside fp16's normal range (zero, subnormal, overflow, inf, NaN)."""
    np.bitwise_and(a, 0x7FFF, out=x)
    x -= np.uint16(113 << 7)  # wraps below the smallest fp16 normal exponent
    flagged = x >= np.uint16(30 << 7)
    # In range the 7-bit significand widens to 10 bits exactly; exponent bias 127 -> 15.
    x += np.uint16(1 << 7)
    x <<= np.uint16(3)
    np.bitwise_and(a, 0x8000, out=t)
    x |= t
    flagged |= x != b
    return flagged


_FAST = {
    ("float16", "bfloat16"): _f16_to_bf16,
    ("bfloat16", "float16"): _bf16_to_f16,
}


def bits(x: np.ndarray) -> np.ndarray:
    """The storage bits as unsigned integers (so -0.0 vs 0.0 and NaN payloads differ)."""
    if x.dtype.kind in "iub":
        return x
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


class CastScan:
    """Finds the elements of deployed chunks that are not the round-to-nearest-even cast
    of the trusted chunks; holds its scratch buffers, so use one per thread."""

    def __init__(self, source: np.dtype, target: np.dtype, chunk: int) -> None:
        self.target = target
        self.fast = _FAST.get((source.name, target.name))
        self._x = np.empty(chunk if self.fast else 0, _U16)
        self._t = np.empty(chunk if self.fast else 0, _U16)

    def mismatches(self, source: np.ndarray, deployed: np.ndarray) -> np.ndarray:
        """Flat indices (into the C-ordered chunks) of the elements of ``deployed`` that
        are not ``source.astype(target)`` bit for bit; elements both NaN are equal."""
        src = np.ascontiguousarray(source).reshape(-1)
        dst = np.ascontiguousarray(deployed).reshape(-1)
        n = src.size
        if self.fast is not None and dst.dtype == self.target and n <= self._x.size:
            flagged = self.fast(src.view(_U16), dst.view(_U16), self._x[:n], self._t[:n])
            candidates = np.flatnonzero(flagged)
        else:
            candidates = np.flatnonzero(bits(src.astype(self.target)) != bits(dst))
        if not candidates.size:
            return candidates
        expected = src[candidates].astype(self.target)
        got = dst[candidates]
        differ = bits(expected) != bits(got)
        both_nan = np.isnan(expected.astype(np.float32)) & np.isnan(got.astype(np.float32))
        return candidates[differ & ~both_nan]


def cast_mismatches(source: np.ndarray, deployed: np.ndarray, target: np.dtype) -> np.ndarray:
    """:meth:`CastScan.mismatches` for one pair of arrays."""
    return CastScan(source.dtype, np.dtype(target), source.size).mismatches(source, deployed)
