"""Generic tampering with no attack semantics: a region of one tensor moved by a multiple
of the tensor's own spread.

The evaluation uses it to measure the smallest change the gate notices on the user's own
model (the minimal detectable change, per tensor kind and region shape). Nothing here
imitates an attack: the region is chosen at random, the signs are random, the size is
``magnitude * std(tensor)`` (float32 rounding noise is about ``1e-7`` of a value, so the
sweep starts at the noise level and goes up in decades).
"""

from __future__ import annotations

import numpy as np

SHAPES = ("element", "row", "column", "block", "channel", "scattered")
"""Region shapes: one element; one row of the ``[out, rest]`` view; one column of it (a
single kernel tap across outputs for a convolution); an 8x8 block; every weight reading
one input channel (``w[:, c]``); 0.1% of the elements scattered at random (at least 2)."""

MAGNITUDES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Sizes of the change in units of the tensor's standard deviation, from float32 noise up."""

QUICK_MAGNITUDES = (1e-6, 1e-4, 1e-2, 1.0)

KINDS = ("matrix", "conv kernel", "embedding", "vector", "quantized matrix")

EMBEDDING_HINTS = ("embed", "wte", "wpe", "tok_", "token_", "word_")


def tensor_kind(name: str, shape: tuple[int, ...], dtype: str) -> str | None:
    """The kind of a tensor for the minimal-detectable-change table, or ``None`` for
    tensors too small to be a trained parameter (scalars, shape constants)."""
    size = int(np.prod(shape)) if shape else 1
    if size < 8:
        return None
    float_dtype = dtype in ("F64", "F32", "F16", "BF16")
    if len(shape) == 1:
        return "vector" if float_dtype else None
    if not float_dtype:
        return "quantized matrix"
    if len(shape) >= 3:
        return "conv kernel"
    if any(h in name.lower() for h in EMBEDDING_HINTS):
        return "embedding"
    return "matrix"


def region_mask(shape_kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``shape`` selecting one region of ``shape_kind`` (:data:`SHAPES`)."""
    if shape_kind not in SHAPES:
        raise ValueError(f"unknown region {shape_kind!r}; choose from {', '.join(SHAPES)}")
    size = int(np.prod(shape))
    rows = shape[0] if len(shape) > 1 else 1
    view = np.zeros((rows, size // rows), dtype=bool)
    r, c = view.shape
    if shape_kind == "element":
        view[rng.integers(r), rng.integers(c)] = True
    elif shape_kind == "row":
        view[rng.integers(r)] = True
    elif shape_kind == "column":
        view[:, rng.integers(c)] = True
    elif shape_kind == "block":
        h, w = min(8, r), min(8, c)
        i, j = rng.integers(r - h + 1), rng.integers(c - w + 1)
        view[i : i + h, j : j + w] = True
    elif shape_kind == "channel":
        full = np.zeros(shape, dtype=bool)
        if len(shape) > 1:
            full[:, rng.integers(shape[1])] = True
        else:  # a vector has one channel per element: the channel is one element
            full[rng.integers(shape[0])] = True
        return full
    else:
        n = max(2, size // 1000)
        view.reshape(-1)[rng.choice(size, size=min(n, size), replace=False)] = True
    return view.reshape(shape)


def spread(w: np.ndarray) -> float:
    """The unit of a change: the tensor's standard deviation (its mean |w| when all
    values are equal, 1 for an all-zero tensor)."""
    x = np.asarray(w, dtype=np.float64)
    s = float(x.std())
    if s > 0:
        return s
    m = float(np.abs(x).mean())
    return m if m > 0 else 1.0


def tamper(
    w: np.ndarray, shape_kind: str, magnitude: float, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """``w`` with one region moved by ``magnitude * spread(w)`` (random signs); returns
    the new float32 values and the number of elements in the region."""
    mask = region_mask(shape_kind, tuple(w.shape), rng)
    n = int(mask.sum())
    delta = magnitude * spread(w) * rng.choice(np.array([-1.0, 1.0]), size=n)
    out = np.asarray(w, dtype=np.float64).copy()
    out[mask] += delta
    return out.astype(np.float32), n
