"""Plain tampering written in the tests, independent of any planter in the scanner.

A tamper is a region (which elements) and a change (how much). Regions are the shapes a
hand edit takes: one element, a few elements, a row, a column, a square block, a conv
output channel, a scattered 0.1%. Changes are additive deltas of a chosen absolute size
with random signs, or values overwritten at a multiple of the tensor's max |w|. Code-level
tampering (int8, ggml blocks) uses the same regions on the integer codes.
"""

from __future__ import annotations

import numpy as np

REGIONS = ("element", "elements3", "row", "column", "block16", "channel", "scattered")


def region_mask(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``shape`` selecting one region of the given kind.

    Rows are the first axis, columns the last; "channel" selects one slice of the first
    axis of a tensor of any rank (a conv output channel, or a row of a matrix).
    """
    mask = np.zeros(shape, dtype=bool)
    size = int(np.prod(shape))
    if size == 0:
        raise ValueError("cannot tamper with an empty tensor")
    flat = mask.reshape(-1)
    if kind == "element":
        flat[rng.integers(size)] = True
    elif kind == "elements3":
        flat[rng.choice(size, size=min(3, size), replace=False)] = True
    elif kind == "scattered":
        n = max(1, size // 1000)
        flat[rng.choice(size, size=n, replace=False)] = True
    elif kind in ("row", "channel"):
        mask[rng.integers(shape[0])] = True
    elif kind == "column":
        if len(shape) < 2:
            raise ValueError("a column needs a tensor of rank >= 2")
        mask[..., rng.integers(shape[-1])] = True
    elif kind == "block16":
        if len(shape) != 2:
            raise ValueError("a block needs a matrix")
        r = rng.integers(max(1, shape[0] - 15))
        c = rng.integers(max(1, shape[1] - 15))
        mask[r : r + 16, c : c + 16] = True
    else:
        raise ValueError(f"unknown region {kind!r}; choose one of {', '.join(REGIONS)}")
    return mask


def add_delta(w: np.ndarray, mask: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """``w`` with ``size`` (absolute, random sign) added to every element of ``mask``."""
    out = np.array(w, dtype=np.float64, copy=True)
    signs = rng.choice(np.array([-1.0, 1.0]), size=int(mask.sum()))
    out[mask] += size * signs
    return out


def overwrite(
    w: np.ndarray, mask: np.ndarray, times_max: float, rng: np.random.Generator
) -> np.ndarray:
    """``w`` with the elements of ``mask`` replaced by random values up to
    ``times_max`` x max |w| (uniform in magnitude, random sign)."""
    out = np.array(w, dtype=np.float64, copy=True)
    peak = float(np.max(np.abs(w))) or 1.0
    n = int(mask.sum())
    out[mask] = rng.uniform(0.5, 1.0, n) * times_max * peak * rng.choice([-1.0, 1.0], n)
    return out


def scale_region(w: np.ndarray, mask: np.ndarray, factor: float) -> np.ndarray:
    """``w`` with the elements of ``mask`` multiplied by ``factor``."""
    out = np.array(w, dtype=np.float64, copy=True)
    out[mask] *= factor
    return out
