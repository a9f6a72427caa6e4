"""Compare one trusted tensor with one deployed tensor.

Unchanged tensors cost a streamed byte compare and nothing else. Changed tensors are
walked in row chunks (bounded memory whatever the tensor size) to count, measure and
localize the change, or to check a dtype change against correct rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from scanner.artifact import Artifact, TensorInfo
from scanner.diff.castbits import CastScan
from scanner.diff.model import CastCheck, Localization, ValueDelta
from scanner.values import numpy_dtype

CHUNK_ELEMENTS = 1 << 22

# (explicit mantissa bits, smallest normal exponent) per float dtype, for ulp sizes.
_FLOAT_FORMAT = {
    "F64": (52, -1022),
    "F32": (23, -126),
    "BF16": (7, -126),
    "F16": (10, -14),
    "F8_E4M3": (3, -6),
    "F8_E5M2": (2, -14),
    "F8_E4M3FNUZ": (3, -7),
    "F8_E5M2FNUZ": (2, -15),
}


BYTE_CHUNK = 1 << 20
"""Bytes compared per step: both chunks stay in L2 while numpy compares them."""
RELEASE_BYTES = 64 << 20
"""Walked pages are released from the mapping every this many bytes."""


def bytes_equal(a: Artifact, a_name: str, b: Artifact, b_name: str) -> bool:
    """Compare both tensors' bytes through zero-copy mmap views, chunk by chunk; stops
    at the first difference. Walked pages are released as the compare goes, so resident
    memory stays flat whatever the tensor size."""
    ia, ib = a.tensors[a_name], b.tensors[b_name]
    if ia.nbytes != ib.nbytes:
        return False
    n = ia.nbytes
    # numpy compares ~10x faster than memoryview equality and releases the GIL.
    word = np.uint64 if n % 8 == 0 else np.uint8
    va = np.frombuffer(a.raw(a_name), dtype=word)
    vb = np.frombuffer(b.raw(b_name), dtype=word)
    step = BYTE_CHUNK // va.itemsize
    released = 0
    try:
        for start in range(0, va.size, step):
            if not np.array_equal(va[start : start + step], vb[start : start + step]):
                return False
            done = (start + step) * va.itemsize
            if done - released >= RELEASE_BYTES:
                a.release(a_name, released, done - released)
                b.release(b_name, released, done - released)
                released = done
        return True
    finally:
        a.release(a_name, released)
        b.release(b_name, released)


def _grid(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """View any shape as (axis 0, axis 1, everything else)."""
    if not shape:
        return 1, 1, 1
    d0 = shape[0]
    d1 = shape[1] if len(shape) > 1 else 1
    rest = math.prod(shape[2:]) if len(shape) > 2 else 1
    return d0, d1, rest


def iter_rows(
    artifact: Artifact, info: TensorInfo, native: bool = True
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, rows)`` chunks shaped ``(n, d1, rest)``.

    ``native`` keeps the storage dtype (for bit-exact comparisons); block-quantized
    tensors are always dequantized to float32.
    """
    d0, d1, rest = _grid(info.shape)
    per_row = max(1, d1 * rest)
    step = max(1, CHUNK_ELEMENTS // per_row)
    raw = artifact.raw(info.name)
    if info.dtype.is_block_quantized:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        row_bytes = info.dtype.nbytes(per_row)
        qtype = GGMLQuantizationType[info.dtype.name]
        for r0 in range(0, d0, step):
            r1 = min(d0, r0 + step)
            blocks = np.frombuffer(raw[r0 * row_bytes : r1 * row_bytes], dtype=np.uint8)
            values = dequantize(blocks.reshape(r1 - r0, row_bytes), qtype)
            yield r0, np.asarray(values, dtype=np.float32).reshape(r1 - r0, d1, rest)
        return
    npd = numpy_dtype(info.dtype.name)
    if npd is None:
        values = artifact.to_float(info.name).reshape(d0, d1, rest)
        for r0 in range(0, d0, step):
            yield r0, values[r0 : r0 + step]
        return
    array = np.frombuffer(raw, dtype=npd).reshape(d0, d1, rest)
    row_bytes = per_row * npd.itemsize
    for r0 in range(0, d0, step):
        chunk = array[r0 : r0 + step]
        yield r0, chunk if native else chunk.astype(np.float32)
        # Unmap the pages just walked (they stay cached): resident memory stays flat.
        artifact.release(info.name, r0 * row_bytes, len(chunk) * row_bytes)


def _bits(x: np.ndarray) -> np.ndarray:
    """Reinterpret as unsigned ints so -0.0 vs 0.0 and NaN payloads count as changes."""
    if x.dtype.kind in "iub":
        return x
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _to_float(x: np.ndarray) -> np.ndarray:
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


@dataclass
class _Accumulator:
    d0: int
    d1: int
    n_changed: int = 0
    max_abs: float = 0.0
    sum_d2: float = 0.0
    sum_a2: float = 0.0

    def __post_init__(self) -> None:
        self.row_mask = np.zeros(self.d0, dtype=bool)
        self.col_mask = np.zeros(self.d1, dtype=bool)

    def add(self, r0: int, mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        a64 = a.astype(np.float64, copy=False)
        self.sum_a2 += float(np.sum(np.square(a64), where=np.isfinite(a64)))
        count = int(mask.sum())
        if not count:
            return
        self.n_changed += count
        d = np.abs(b[mask].astype(np.float64) - a[mask].astype(np.float64))
        finite = d[np.isfinite(d)]
        if finite.size < d.size:
            self.max_abs = math.inf
        if finite.size:
            self.max_abs = max(self.max_abs, float(finite.max()))
            self.sum_d2 += float(np.dot(finite, finite))
        if finite.size < d.size:
            self.sum_d2 = math.inf
        rows_hit = mask.any(axis=(1, 2))
        self.row_mask[r0 : r0 + mask.shape[0]] |= rows_hit
        self.col_mask |= mask.any(axis=(0, 2))

    def result(self, n_elements: int, shape: tuple[int, ...]) -> tuple[ValueDelta, Localization]:
        rel = (
            math.sqrt(self.sum_d2) / math.sqrt(self.sum_a2)
            if self.sum_a2 > 0
            else (math.inf if self.sum_d2 > 0 else 0.0)
        )
        delta = ValueDelta(n_elements, self.n_changed, self.max_abs, rel)
        rows = tuple(int(i) for i in np.flatnonzero(self.row_mask))
        cols = tuple(int(i) for i in np.flatnonzero(self.col_mask)) if len(shape) > 1 else ()
        block: tuple[tuple[int, int], ...] = ()
        density = 0.0
        if rows:
            block = ((rows[0], rows[-1] + 1),)
            area = rows[-1] + 1 - rows[0]
            if cols:
                block += ((cols[0], cols[-1] + 1),)
                area *= cols[-1] + 1 - cols[0]
            rest = math.prod(shape[2:]) if len(shape) > 2 else 1
            density = self.n_changed / (area * rest) if area else 0.0
        where = Localization(
            rows=rows,
            cols=cols,
            n_rows=self.d0 if shape else 0,
            n_cols=self.d1 if len(shape) > 1 else 0,
            block=block,
            block_density=density,
        )
        return delta, where


def value_delta(
    a: Artifact, a_name: str, b: Artifact, b_name: str
) -> tuple[ValueDelta, Localization]:
    """Count, measure and localize the differences of two same-shape, same-dtype tensors."""
    ia, ib = a.tensors[a_name], b.tensors[b_name]
    d0, d1, _ = _grid(ia.shape)
    acc = _Accumulator(d0, d1)
    for (r0, ca), (_, cb) in zip(iter_rows(a, ia), iter_rows(b, ib), strict=True):
        mask = _bits(ca) != _bits(cb)
        acc.add(r0, mask, _to_float(ca), _to_float(cb))
    return acc.result(ia.n_elements, ia.shape)


def is_float_cast(source: str, target: str) -> bool:
    return source != target and source in _FLOAT_FORMAT and target in _FLOAT_FORMAT


def ulp(values: np.ndarray, dtype_name: str) -> np.ndarray:
    """Spacing of ``dtype_name`` at each value (its smallest subnormal step near zero)."""
    mantissa, min_exp = _FLOAT_FORMAT[dtype_name]
    mag = np.abs(values.astype(np.float64))
    with np.errstate(divide="ignore"):
        exp = np.floor(np.log2(np.where(mag > 0, mag, 1.0)))
    exp = np.maximum(exp, min_exp)
    return np.ldexp(1.0, (exp - mantissa).astype(np.int64))


EXACT_CHUNK_ELEMENTS = 1 << 18
"""Elements per pass of the exact-cast scan: the 16-bit temporaries stay in L2."""


def iter_flat_pairs(
    a: Artifact, ia: TensorInfo, b: Artifact, ib: TensorInfo, elements: int = EXACT_CHUNK_ELEMENTS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The two tensors' elements, flat and in their storage dtypes, in aligned chunks of
    ``elements``. Zero-copy mmap views; each chunk's pages are released from the mapping
    once the caller has moved on, so resident memory stays flat whatever the size."""
    npa, npb = numpy_dtype(ia.dtype.name), numpy_dtype(ib.dtype.name)
    assert npa is not None and npb is not None
    va = np.frombuffer(a.raw(ia.name), dtype=npa)
    vb = np.frombuffer(b.raw(ib.name), dtype=npb)
    released = 0
    for start in range(0, ia.n_elements, elements):
        yield va[start : start + elements], vb[start : start + elements]
        # Release in steps of 64 MiB of the wider side: madvise per small chunk costs more
        # than it saves.
        done = start + elements
        if done - released >= (64 << 20) // max(npa.itemsize, npb.itemsize, 1):
            a.release(ia.name, released * npa.itemsize, (done - released) * npa.itemsize)
            b.release(ib.name, released * npb.itemsize, (done - released) * npb.itemsize)
            released = done
    a.release(ia.name, released * npa.itemsize)
    b.release(ib.name, released * npb.itemsize)


def exact_cast_mismatches(a: Artifact, ia: TensorInfo, b: Artifact, ib: TensorInfo) -> int:
    """How many deployed elements are not the round-to-nearest-even cast of the trusted
    ones (the bit-level scan of ``scanner.diff.castbits``; no float statistics)."""
    source, target = numpy_dtype(ia.dtype.name), numpy_dtype(ib.dtype.name)
    assert source is not None and target is not None
    scan = CastScan(source, target, EXACT_CHUNK_ELEMENTS)
    return sum(len(scan.mismatches(ca, cb)) for ca, cb in iter_flat_pairs(a, ia, b, ib))


def cast_check(
    a: Artifact, a_name: str, b: Artifact, b_name: str
) -> tuple[CastCheck, ValueDelta, Localization]:
    """Check a float dtype change element by element against correct rounding.

    The localization and delta describe the elements beyond rounding (the ones no cast
    explains); the delta's ``n_changed`` counts those elements. A cast that is exact
    (every element the correctly rounded value) is settled by one bit-level pass and
    needs no statistics: nothing is beyond rounding and nothing changed.
    """
    ia, ib = a.tensors[a_name], b.tensors[b_name]
    d0, d1, _ = _grid(ia.shape)
    if exact_cast_mismatches(a, ia, b, ib) == 0:
        delta, where = _Accumulator(d0, d1).result(ia.n_elements, ia.shape)
        return CastCheck(ia.dtype.name, ib.dtype.name, True, 0, 0), delta, where
    target_np = numpy_dtype(ib.dtype.name)
    narrower = min(ia.dtype.name, ib.dtype.name, key=lambda n: _FLOAT_FORMAT[n][0])
    acc = _Accumulator(d0, d1)
    mismatched = 0
    for (r0, ca), (_, cb) in zip(iter_rows(a, ia), iter_rows(b, ib), strict=True):
        expected = ca.astype(target_np)
        both_nan = np.isnan(expected.astype(np.float32)) & np.isnan(cb.astype(np.float32))
        mismatch = (_bits(expected) != _bits(cb)) & ~both_nan
        n_mismatch = int(mismatch.sum())
        mismatched += n_mismatch
        fa, fb = _to_float(ca), _to_float(cb)
        beyond = np.zeros_like(mismatch)
        if n_mismatch:
            va, vb = fa[mismatch].astype(np.float64), fb[mismatch].astype(np.float64)
            with np.errstate(invalid="ignore"):
                beyond[mismatch] = ~(np.abs(vb - va) <= ulp(va, narrower))
        acc.add(r0, beyond, fa, fb)
    delta, where = acc.result(ia.n_elements, ia.shape)
    check = CastCheck(ia.dtype.name, ib.dtype.name, mismatched == 0, mismatched, delta.n_changed)
    return check, delta, where
