"""The GPTQ algorithm (Frantar et al., 2022) in numpy, to make search-quantized test files.

Columns are quantized in order; each column's rounding error is spread over the columns
not yet quantized through the inverse Hessian of the layer inputs (H = 2 X X^T), and a
group's scale and zero point are taken from the (already updated) weights when the
quantizer reaches the group's first column, as AutoGPTQ does without static groups.
"""

from __future__ import annotations

import numpy as np


def gptq_quantize(
    w: np.ndarray,
    x: np.ndarray,
    *,
    bits: int = 4,
    group: int = 128,
    symmetric: bool = False,
    damp: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes ``[in, out]``, scales and zero points ``[groups, out]`` of ``w [out, in]``
    under calibration inputs ``x [in, samples]``."""
    maxq = (1 << bits) - 1
    W = w.astype(np.float64).copy()
    out_f, in_f = W.shape
    H = 2 * x.astype(np.float64) @ x.T.astype(np.float64)
    H += damp * np.mean(np.diag(H)) * np.eye(in_f)
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper
    codes = np.zeros((in_f, out_f), np.uint8)
    n_groups = in_f // group
    scales = np.zeros((n_groups, out_f), np.float32)
    zeros = np.zeros((n_groups, out_f), np.float32)
    for i in range(in_f):
        g = i // group
        if i % group == 0:
            blk = W[:, i : i + group]
            xmin = np.minimum(blk.min(axis=1), 0)
            xmax = np.maximum(blk.max(axis=1), 0)
            if symmetric:
                xmax = np.maximum(np.abs(xmin), xmax)
                xmin = np.where(xmin < 0, -xmax, xmin)
            s = ((xmax - xmin) / maxq).astype(np.float32)
            s = np.where(s > 0, s, 1).astype(np.float16).astype(np.float32)
            z = np.full(out_f, (maxq + 1) / 2) if symmetric else np.round(-xmin / s)
            scales[g], zeros[g] = s, z
        s, z = scales[g].astype(np.float64), zeros[g].astype(np.float64)
        q = np.clip(np.rint(W[:, i] / s + z), 0, maxq)
        codes[i] = q.astype(np.uint8)
        err = (W[:, i] - s * (q - z)) / Hinv[i, i]
        W[:, i + 1 :] -= np.outer(err, Hinv[i, i + 1 :])
    return codes, scales, zeros


def calibration(in_f: int, samples: int = 512, seed: int = 0) -> np.ndarray:
    """Correlated activations with a few strong channels, like a transformer's inputs."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((in_f, in_f)) / np.sqrt(in_f)
    x = mix @ rng.standard_normal((in_f, samples))
    x[rng.choice(in_f, max(1, in_f // 64), replace=False)] *= 8
    return x.astype(np.float32) + 0.3
