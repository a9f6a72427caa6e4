"""Benign transformations a tamper can hide under, written here from their textbook
definitions (never from the scanner's simulators): an AdamW fine-tune, a LoRA merge,
magnitude pruning. Casts and quantizations are in :mod:`tests.tamper.storage`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def finetune(
    weights: Mapping[str, np.ndarray],
    lr: float,
    seed: int,
    *,
    steps: int = 6,
    batch: int = 4,
    only: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Every float tensor (or those in ``only``) after ``steps`` AdamW updates of
    learning rate ``lr``. Gradients have the structure of backpropagation: for a weight
    of shape (out, in...) a batch of outer products error x activation, with heavy-tailed
    (log-normal) activation scales per input feature as in trained networks; Adam's
    normalization makes every element move by about ``lr`` per step."""
    rng = np.random.default_rng(seed)
    keep = set(only) if only is not None else None
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if w.dtype.kind != "f" or (keep is not None and name not in keep):
            out[name] = w
            continue
        w64 = np.asarray(w, dtype=np.float64)
        rows = w64.reshape(w64.shape[0], -1) if w64.ndim > 1 else w64.reshape(1, -1)
        feature = rng.lognormal(0.0, 1.0, rows.shape[1])
        m = np.zeros_like(rows)
        v = np.zeros_like(rows)
        cur = rows.copy()
        for t in range(1, steps + 1):
            x = rng.standard_normal((batch, rows.shape[1])) * feature
            e = rng.standard_normal((batch, rows.shape[0]))
            g = e.T @ x / batch + 0.01 * rng.standard_normal(rows.shape)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            mh, vh = m / (1 - 0.9**t), v / (1 - 0.999**t)
            cur = cur - lr * (mh / (np.sqrt(vh) + 1e-8) + 0.01 * cur)
        out[name] = cur.reshape(w.shape).astype(w.dtype)
    return out


def lora_merge(
    weights: Mapping[str, np.ndarray],
    modules: Iterable[str],
    rank: int,
    rel: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """``W + B @ A`` (rank ``rank``) on every 2-D tensor whose dotted name contains one of
    ``modules``, the update's Frobenius norm ``rel`` x the weight's (a trained adapter's
    scale x B @ A)."""
    rng = np.random.default_rng(seed)
    wanted = tuple(modules)
    out = dict(weights)
    for name, w in weights.items():
        parts = name.split(".")
        if w.ndim != 2 or not any(m in parts for m in wanted):
            continue
        a = rng.standard_normal((rank, w.shape[1])) / np.sqrt(w.shape[1])
        b = rng.standard_normal((w.shape[0], rank))
        delta = b @ a
        delta *= rel * np.linalg.norm(w) / np.linalg.norm(delta)
        out[name] = (w.astype(np.float64) + delta).astype(w.dtype)
    return out


def magnitude_prune(
    weights: Mapping[str, np.ndarray], sparsity: float, names: Iterable[str]
) -> dict[str, np.ndarray]:
    """The ``sparsity`` smallest-magnitude weights of each named tensor set to zero."""
    out = dict(weights)
    for name in names:
        w = np.array(weights[name], copy=True)
        k = int(w.size * sparsity)
        idx = np.argsort(np.abs(w).reshape(-1), kind="stable")[:k]
        w.reshape(-1)[idx] = 0
        out[name] = w
    return out
