"""Confidence intervals for the rates the evaluation reports."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) for ``k`` successes in ``n`` trials.

    Chosen over the normal approximation because evaluation rows are small (a few seeds)
    and often at 0 or 100%, where the normal interval collapses to a point."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = centre - half, centre + half
    return (0.0 if lo < 1e-12 else lo, 1.0 if hi > 1 - 1e-12 else hi)


def fmt_rate(k: int, n: int) -> str:
    """``67% [21-94] (2/3)``: the rate, its 95% Wilson interval and the counts."""
    if n == 0:
        return "- (0/0)"
    lo, hi = wilson(k, n)
    return f"{k / n:.0%} [{lo * 100:.0f}-{hi * 100:.0f}] ({k}/{n})"
