"""Load a changed tensor pair once, as float arrays plus the raw storage bits.

Every detector works on the canonical matrix view ``(out, in, k)``: axis 0 the output
channel / row, axis 1 the input channel / column, and the rest (conv kernel taps)
flattened into ``k``. Huge tensors with a localized change are loaded only on the rows
that changed, so the work stays proportional to the change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from scanner.artifact import Artifact
from scanner.diff.model import TensorDiff
from scanner.parallel import map_values

T = TypeVar("T")

FULL_LOAD_ELEMENTS = 1 << 25
"""Tensors up to this size are loaded whole; larger ones only on their changed rows."""
MAX_ROWS = 8192
"""Rows kept from a huge tensor whose change touches many rows (evenly sampled)."""

FLOAT_DTYPES = {"F32": (23, 8), "F16": (10, 5), "BF16": (7, 8)}
"""(mantissa bits, exponent bits) of the float dtypes the bit-level checks understand."""


@dataclass(frozen=True, eq=False)
class TensorPair:
    """One changed tensor: values on both sides in the canonical ``(out, in, k)`` view."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    trusted: np.ndarray
    deployed: np.ndarray
    trusted_bits: np.ndarray
    deployed_bits: np.ndarray
    rows: np.ndarray | None
    """Row indices the arrays hold when only part of the tensor was loaded, else None."""
    diff: TensorDiff

    @property
    def complete(self) -> bool:
        return self.rows is None

    @property
    def changed(self) -> np.ndarray:
        """Element mask of bit-level changes (so -0.0 vs 0.0 counts)."""
        return self.trusted_bits != self.deployed_bits

    @property
    def delta(self) -> np.ndarray:
        return self.deployed.astype(np.float64) - self.trusted.astype(np.float64)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        out, inp, k = self.trusted.shape
        return out, inp * k

    def row_index(self, i: int) -> int:
        """Tensor row of local row ``i``."""
        return int(i) if self.rows is None else int(self.rows[i])


def analysed_together(
    pairs: Mapping[str, TensorPair], fn: Callable[[TensorPair], T]
) -> dict[str, T]:
    """``{name: fn(pair)}`` on every core. The per-tensor analyses are independent and
    numpy releases the GIL in their passes; tensors analysed at once hold at most
    ``FULL_LOAD_ELEMENTS`` elements between them (a larger one runs alone), so peak memory
    is that of the largest tensor's analysis, as one at a time."""
    return map_values(fn, pairs, cost=lambda p: int(p.trusted.size), budget=FULL_LOAD_ELEMENTS)


def canonical_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if not shape:
        return 1, 1, 1
    if len(shape) == 1:
        return shape[0], 1, 1
    return shape[0], shape[1], math.prod(shape[2:]) if len(shape) > 2 else 1


def _bits(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iub":
        return a
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def load_pair(trusted: Artifact, deployed: Artifact, t: TensorDiff) -> TensorPair | None:
    """The pair for a CHANGED tensor, or None when its dtype has no plain numeric view."""
    d_name = t.deployed_name or t.name
    info = trusted.tensors[t.name]
    if info.dtype.is_block_quantized:
        return None
    try:
        raw_t = trusted.array(t.name)
        raw_d = deployed.array(d_name)
    except (ValueError, TypeError):
        return None
    if raw_t.dtype.kind not in "fiu" and raw_t.dtype.name != "bfloat16":
        return None
    shape = canonical_shape(info.shape)
    raw_t = raw_t.reshape(shape)
    raw_d = raw_d.reshape(shape)
    rows: np.ndarray | None = None
    if info.n_elements > FULL_LOAD_ELEMENTS and t.where is not None and t.where.rows:
        rows = np.asarray(t.where.rows, dtype=np.int64)
        if rows.size > MAX_ROWS:
            rows = rows[np.linspace(0, rows.size - 1, MAX_ROWS).astype(np.int64)]
        raw_t, raw_d = raw_t[rows], raw_d[rows]
    return TensorPair(
        name=t.name,
        dtype=info.dtype.name,
        shape=tuple(info.shape),
        trusted=np.asarray(raw_t, dtype=np.float32),
        deployed=np.asarray(raw_d, dtype=np.float32),
        trusted_bits=_bits(np.ascontiguousarray(raw_t)),
        deployed_bits=_bits(np.ascontiguousarray(raw_d)),
        rows=rows,
        diff=t,
    )
