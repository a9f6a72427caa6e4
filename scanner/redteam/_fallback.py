"""Small benign transformations the planting library does not provide.

Structured channel pruning and tensor renaming for weight files are twins the
evaluation needs (docs/threats.md: structured pruning vs SRA, renamed tensors vs replaced
ones); they are simple enough to live here until the library grows them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def channel_prune(
    weights: Mapping[str, np.ndarray], tensors: Sequence[str], fraction: float
) -> dict[str, np.ndarray]:
    """Zero the ``fraction`` of output channels (axis 0) with the smallest L2 norm in each
    listed tensor (at least one channel), as structured pruners do before removing them."""
    out = {k: np.array(v, copy=True) for k, v in weights.items()}
    for t in tensors:
        w = out[t]
        # The same norm computation a channel-pruning checker uses (ord=2 on float64), so
        # channels of tied norm are ranked identically.
        norms = np.linalg.norm(w.reshape(w.shape[0], -1).astype(np.float64), ord=2, axis=1)
        k = max(1, round(w.shape[0] * fraction))
        w[np.argsort(norms, kind="stable")[:k]] = 0
    return out


def rename_map(names: Sequence[str], seed: int) -> dict[str, str]:
    """A checkpoint-conversion style renaming: every tensor gets a new prefix and its
    dotted path segments a seeded alias (as when a model is re-exported by another
    framework); the mapping is one-to-one."""
    rng = np.random.default_rng(seed)
    prefix = f"model{int(rng.integers(10, 99))}."
    mapping = {n: prefix + n.replace(".", "_") for n in names}
    if len(set(mapping.values())) != len(mapping):  # fall back to an index suffix
        mapping = {n: f"{prefix}{i}_{n}" for i, n in enumerate(names)}
    return mapping
