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

from collections.abc import Callable

import numpy as np

_U16 = np.dtype(np.uint16)


def _f16_to_bf16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of elements to re-check exactly: the fast F16 -> BF16 result differs from
    ``b`` or the element is special (exponent field 0 or 31)."""
    x = a & np.uint16(0x7FFF)
    # Round the 10-bit significand to 7 bits, nearest even; a carry runs into the exponent.
    t = (x >> np.uint16(3)) & np.uint16(1)
    t += np.uint16(3)
    x += t
    x >>= np.uint16(3)
    x += np.uint16(112 << 7)  # exponent bias 15 -> 127
    x |= a & np.uint16(0x8000)
    flagged = x != b
    e = a & np.uint16(0x7C00)
    e -= np.uint16(0x0400)  # wraps: exponent 0 -> 0xFC00, exponent 31 -> 0x7800
    flagged |= e >= np.uint16(0x7800)
    return flagged


def _bf16_to_f16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of elements to re-check exactly for BF16 -> F16: the fast result differs or
    the exponent is outside fp16's normal range (zero, subnormal, overflow, inf, NaN)."""
    y = a & np.uint16(0x7FFF)
    y -= np.uint16(113 << 7)  # wraps below the smallest fp16 normal exponent
    special = y >= np.uint16(30 << 7)
    # In range the 7-bit significand widens to 10 bits exactly; exponent bias 127 -> 15.
    y += np.uint16(1 << 7)
    y <<= np.uint16(3)
    y |= a & np.uint16(0x8000)
    flagged = y != b
    flagged |= special
    return flagged


_FAST: dict[tuple[str, str], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ("float16", "bfloat16"): _f16_to_bf16,
    ("bfloat16", "float16"): _bf16_to_f16,
}


def bits(x: np.ndarray) -> np.ndarray:
    """The storage bits as unsigned integers (so -0.0 vs 0.0 and NaN payloads differ)."""
    if x.dtype.kind in "iub":
        return x
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def cast_mismatches(source: np.ndarray, deployed: np.ndarray, target: np.dtype) -> np.ndarray:
    """Flat indices (into the C-ordered arrays) of the elements of ``deployed`` that are
    not ``source.astype(target)`` bit for bit; elements both NaN are equal."""
    src = np.ascontiguousarray(source).reshape(-1)
    dst = np.ascontiguousarray(deployed).reshape(-1)
    fast = _FAST.get((src.dtype.name, dst.dtype.name))
    if fast is not None and dst.dtype == target:
        candidates = np.flatnonzero(fast(src.view(_U16), dst.view(_U16)))
    else:
        candidates = np.flatnonzero(bits(src.astype(target)) != bits(dst))
    if not candidates.size:
        return candidates
    expected = src[candidates].astype(target)
    got = dst[candidates]
    differ = bits(expected) != bits(got)
    both_nan = np.isnan(expected.astype(np.float32)) & np.isnan(got.astype(np.float32))
    return candidates[differ & ~both_nan]
