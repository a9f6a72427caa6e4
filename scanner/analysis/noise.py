"""Storage rounding noise: the only change that may be called "below rounding noise".

Two roundings of one real value to the same float dtype differ by at most one unit in
the last place (ulp) of that dtype at that magnitude; arithmetic done in the stored
precision before the final rounding (a re-export that rescales, re-normalizes or sums in
a different order) adds about one more. So a changed element is storage noise when

    |b - a| <= ULP_BOUND * ulp_dtype(max(|a|, |b|))

and a changed tensor is storage noise only when **every** changed element is. The test
is element by element on the stored dtype, never on an aggregate: one element beyond the
bound makes the tensor something else (a fine-tune, an edit) for the other detectors to
explain. Integer storage (codes) has no rounding noise at all: storing or copying codes
never changes them, so a changed code needs a claim (re-quantization) to explain it.

A round trip through a narrower float dtype (F32 -> F16/BF16 -> F32) is a cast, i.e. a
re-derivation: every changed deployed value must equal the trusted value rounded to
nearest-even in that dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ULP_BOUND = 2.0
"""Ulps of the stored dtype (at the element's magnitude) a stored value may move by and
still be storage noise: one for two roundings of one value, one for arithmetic in the
stored precision before rounding."""

_MANTISSA = {"F64": 52, "F32": 23, "F16": 10, "BF16": 7, "F8_E4M3": 3, "F8_E5M2": 2}
_MIN_EXP = {"F64": -1022, "F32": -126, "F16": -14, "BF16": -126, "F8_E4M3": -6, "F8_E5M2": -14}


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to nearest-even BF16, as float64.

    Values exactly representable in float32 (every F32, F16 and BF16 stored value) are
    rounded on their bits, the upper half of the float32 word; others go through
    ml_dtypes, which costs half a second to import."""
    x32 = x.astype(np.float32)
    if not np.array_equal(x32, x, equal_nan=True):
        import ml_dtypes

        return x.astype(ml_dtypes.bfloat16).astype(np.float64)
    bits = x32.view(np.uint32)
    tie_to_even = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + np.uint32(0x7FFF) + tie_to_even) & np.uint32(0xFFFF0000)
    out = rounded.view(np.float32).astype(np.float64)
    return np.where(np.isnan(x), x, out)


def _round_through(name: str, x: np.ndarray) -> np.ndarray:
    if name == "F16":
        return x.astype(np.float16).astype(np.float64)
    return round_to_bfloat16(x)


@dataclass(frozen=True)
class NoiseResult:
    within: bool
    """Every changed element is within the bound (or a narrower-dtype round trip)."""
    kind: str
    """``storage rounding`` or ``round trip through F16`` / ``BF16``; empty if not."""
    worst_ulps: float
    """Largest change seen, in ulps of the stored dtype at that element's magnitude."""
    beyond: int
    """Changed elements beyond the bound."""

    def evidence(self) -> dict[str, object]:
        return {
            "noise_kind": self.kind,
            "max_change_ulps": round(min(self.worst_ulps, 1e12), 3),
            "ulp_bound": ULP_BOUND,
            "elements_beyond_bound": self.beyond,
        }


def _spacing_by_exponent(dtype: type, exponent_shift: int) -> np.ndarray:
    """|spacing| of ``dtype`` for each value of its sign-and-exponent field: the spacing
    of a binary float depends on nothing else."""
    fields = 1 << (np.dtype(dtype).itemsize * 8 - exponent_shift)
    uint = np.dtype(f"u{np.dtype(dtype).itemsize}")
    first_of_each = (np.arange(fields, dtype=uint) << uint.type(exponent_shift)).view(dtype)
    with np.errstate(invalid="ignore"):
        return np.abs(np.spacing(first_of_each)).astype(np.float32)


_F16_SPACING = _spacing_by_exponent(np.float16, 10)
_F32_SPACING = _spacing_by_exponent(np.float32, 23)


def element_ulp(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """Ulp of ``dtype`` at ``max(|a|, |b|)`` per element (1 for integer storage)."""
    if dtype not in _MANTISSA:
        return np.ones(np.shape(a), dtype=np.float32)
    mag = np.maximum(np.abs(a), np.abs(b))
    if dtype in ("F32", "BF16"):
        # Same exponent range as float32: the spacing of float32 shifted by the mantissa
        # difference, looked up by exponent (much cheaper than np.spacing per element).
        fields = mag.astype(np.float32, copy=False).view(np.uint32) >> np.uint32(23)
        ulp = np.take(_F32_SPACING, fields)
        if dtype == "BF16":
            ulp *= np.float32(2.0 ** (_MANTISSA["F32"] - _MANTISSA["BF16"]))
        return ulp
    if dtype == "F16":
        return np.take(_F16_SPACING, mag.astype(np.float16).view(np.uint16) >> np.uint16(10))
    if dtype == "F64":
        return np.spacing(mag.astype(np.float64))
    mag64 = mag.astype(np.float64)
    _, exp = np.frexp(mag64)  # mag = m * 2**exp with m in [0.5, 1): floor(log2) = exp - 1
    exp = np.maximum(exp - 1, _MIN_EXP[dtype])
    return np.ldexp(1.0, exp - _MANTISSA[dtype])


def noise_bound(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """The rounding scale of each element: ``ULP_BOUND`` ulps of a float dtype, one code
    of integer storage (a floor for statistics; integer codes are never storage noise,
    see :func:`storage_noise`)."""
    if dtype not in _MANTISSA:
        return np.ones(np.shape(a), dtype=np.float32)
    return element_ulp(a, b, dtype) * np.float32(ULP_BOUND)


_LEVEL_FIELDS = {
    "F16": (np.uint16, 10, 0x1F),
    "BF16": (np.uint16, 7, 0xFF),
    "F32": (np.uint32, 23, 0xFF),
}
"""Storage word, shift and mask of each float dtype's exponent field."""


def bound_levels(
    a: np.ndarray,
    b: np.ndarray,
    dtype: str,
    bits: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`noise_bound` as ``(levels, values)`` with ``values[levels]`` equal to it:
    the bound of a binary float depends only on the exponent of the larger magnitude,
    so one byte per element orders and names it (a quarter of the bound's memory).

    ``bits`` are the storage words of ``a`` and ``b`` when at hand: the levels are then
    read off them, changed words only for ``b``. None for dtypes without that layout and
    for non-finite magnitudes."""
    if dtype not in _LEVEL_FIELDS:
        return None
    word, shift, mask = _LEVEL_FIELDS[dtype]
    if dtype == "F16":
        values = _F16_SPACING[:32] * np.float32(ULP_BOUND)
    else:
        widen = np.float32(2.0 ** (_MANTISSA["F32"] - _MANTISSA[dtype]))
        values = _F32_SPACING[:256] * widen * np.float32(ULP_BOUND)

    def level(words: np.ndarray, shift: int = shift, mask: int = mask) -> np.ndarray:
        out = (words >> words.dtype.type(shift)).astype(np.uint8)
        out &= np.uint8(mask)
        return out

    if bits is not None and all(x.dtype == word and x.shape == a.shape for x in bits):
        levels = level(bits[0])
        at = np.flatnonzero(bits[0] != bits[1])
        levels.reshape(-1)[at] = np.maximum(levels.reshape(-1)[at], level(bits[1].reshape(-1)[at]))
    else:
        mag = np.maximum(np.abs(a), np.abs(b))
        if dtype == "F16":
            levels = level(mag.astype(np.float16).view(np.uint16))
        else:  # BF16 shares float32's exponent field
            levels = level(mag.astype(np.float32, copy=False).view(np.uint32), 23, 0xFF)
    if levels.size and not np.isfinite(values[int(levels.max())]):
        return None
    return levels, values


def integer_storage(dtype: str) -> bool:
    """Whether ``dtype`` stores integer codes (one step at every magnitude)."""
    return dtype not in _MANTISSA


def beyond_noise(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """Elements whose change is beyond storage noise: more than ``ULP_BOUND`` ulps of a
    float dtype; any change of an integer code (codes are never storage noise)."""
    d = np.abs(b - a, dtype=np.float32)
    if integer_storage(dtype):
        return d > 0
    return d > noise_bound(a, b, dtype)


def storage_noise(a: np.ndarray, b: np.ndarray, changed: np.ndarray, dtype: str) -> NoiseResult:
    """Whether every changed element of ``a -> b`` (float views of ``dtype`` storage) is
    storage rounding noise."""
    ta = a[changed].astype(np.float64)
    tb = b[changed].astype(np.float64)
    if ta.size == 0:
        return NoiseResult(True, "storage rounding", 0.0, 0)
    if not (np.all(np.isfinite(ta)) and np.all(np.isfinite(tb))):
        return NoiseResult(False, "", float("inf"), int(ta.size))
    ulps = np.abs(tb - ta) / element_ulp(ta, tb, dtype).astype(np.float64)
    worst = float(ulps.max())
    if dtype not in _MANTISSA:
        return NoiseResult(False, "", worst, int(ta.size))
    bound = ULP_BOUND
    beyond = int(np.count_nonzero(ulps > bound))
    if beyond == 0:
        return NoiseResult(True, "storage rounding", worst, 0)
    for name in ("F16", "BF16"):
        if _MANTISSA.get(dtype, 0) <= _MANTISSA[name]:
            continue
        if np.array_equal(_round_through(name, ta), tb):
            return NoiseResult(True, f"round trip through {name}", worst, 0)
    return NoiseResult(False, "", worst, beyond)
