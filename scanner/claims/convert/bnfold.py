"""BatchNormalization folded into the convolution before it, re-derived within rounding.

Exporters in inference mode (``torch.onnx.export``, ONNX Runtime) replace ``Conv`` then
``BatchNormalization(gamma, beta, mean, var, eps)`` by one ``Conv`` with

    W' = W * s,   b' = (b - mean) * s + beta,   s = gamma / sqrt(var + eps)

per output channel. A deployed Conv weight and bias with no trusted counterpart are
checked against every trusted convolution weight of the same shape and every trusted
BatchNorm parameter set (PyTorch's ``<prefix>.weight / .bias / .running_mean /
.running_var``) of as many channels, for the usual epsilons (``eps`` is a
hyperparameter, not stored with the weights).

Bound: the exporter computes in float32, so each result may differ from the exact
value by a few units of float32 rounding: ``|W' - W*s| <= 8u |W*s|`` and
``|b' - exact| <= 8u (|b s| + |mean s| + |beta|) + 8u |b'|`` with ``u = 2^-24``, plus
one float32 subnormal step. Any element outside is a change, reported with its channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scanner.claims.convert.match import Side

EPSILONS = (1e-5, 1e-3, 1e-4, 1e-6, 1e-12, 1e-8, 1e-2, 1e-1, 0.0)
"""BatchNorm epsilons in use (PyTorch 1e-5, Keras 1e-3, TF 1e-3 / 1.001e-5 ...)."""
U = 2.0**-24
ROUNDING = 8 * U
TINY = float(np.finfo(np.float32).smallest_subnormal)
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class Fold:
    trusted: tuple[str, ...]
    """Conv weight, conv bias (if any), then gamma, beta, mean, var."""
    deployed: tuple[str, ...]
    """Folded weight, folded bias."""
    eps: float
    max_error_rounding: float
    """Largest error in units of the rounding bound (<= 1 holds)."""


@dataclass(frozen=True)
class FoldFailure:
    """A deployed weight that is a fold of trusted tensors except in some channels."""

    trusted: tuple[str, ...]
    deployed: tuple[str, ...]
    channels: tuple[int, ...]
    worst: dict[str, Any]


def batchnorm_sets(side: Side) -> dict[str, tuple[str, str, str, str]]:
    """PyTorch BatchNorm parameter sets among a side's tensors, by prefix."""
    out = {}
    names = set(side.names)
    for n in side.names:
        if n.endswith(".running_mean"):
            prefix = n[: -len(".running_mean")]
            parts = tuple(f"{prefix}.{p}" for p in _BN_PARTS)
            if all(p in names for p in parts):
                out[prefix] = parts  # type: ignore[assignment]
    return out


def find_folds(
    t: Side, d: Side, conv_pairs: list[tuple[str, str]]
) -> tuple[list[Fold], list[FoldFailure]]:
    """``conv_pairs``: (weight, bias) of deployed Conv nodes whose weight is unpaired."""
    folds: list[Fold] = []
    failures: list[FoldFailure] = []
    bns = batchnorm_sets(t)
    for dw, db in conv_pairs:
        if dw not in d.names:
            continue
        w_shape = d.art.tensors[dw].shape
        channels = w_shape[0]
        best: FoldFailure | None = None
        done = False
        for tw in [n for n in t.names if t.art.tensors[n].shape == w_shape]:
            for parts in bns.values():
                if t.art.tensors[parts[0]].shape != (channels,):
                    continue
                tb = tw[: -len("weight")] + "bias" if tw.endswith("weight") else ""
                tb = tb if tb in t.names and t.art.tensors[tb].shape == (channels,) else ""
                result = _check(t, d, tw, tb, parts, dw, db)
                if isinstance(result, Fold):
                    folds.append(result)
                    t.drop(result.trusted)
                    d.drop(result.deployed)
                    done = True
                    break
                closer = best is None or (
                    result is not None and len(result.channels) < len(best.channels)
                )
                if isinstance(result, FoldFailure) and closer:
                    best = result
            if done:
                break
        if not done and best is not None:
            failures.append(best)
    return folds, failures


def _check(
    t: Side,
    d: Side,
    tw: str,
    tb: str,
    bn: tuple[str, str, str, str],
    dw: str,
    db: str,
) -> Fold | FoldFailure | None:
    """A fold, a fold that fails in some channels (close to one: most channels agree),
    or ``None`` when these tensors have nothing to do with each other."""
    w = t.array(tw).astype(np.float64)
    gamma, beta, mean, var = (t.array(p).astype(np.float64) for p in bn)
    b = t.array(tb).astype(np.float64) if tb else np.zeros_like(gamma)
    w2 = d.array(dw).astype(np.float64)
    b2 = d.array(db).astype(np.float64) if db and db in d.names else None
    chan = (-1,) + (1,) * (w.ndim - 1)
    best: tuple[tuple[float, float], float, np.ndarray] | None = None
    for eps in EPSILONS:
        if np.any(var + eps <= 0):
            continue
        s = gamma / np.sqrt(var + eps)
        exact_w = w * s.reshape(chan)
        err_w = np.abs(w2 - exact_w) / (ROUNDING * np.abs(exact_w) + TINY)
        per_channel = err_w.reshape(w.shape[0], -1).max(axis=1)
        if b2 is not None:
            exact_b = (b - mean) * s + beta
            bound_b = ROUNDING * (np.abs(b * s) + np.abs(mean * s) + np.abs(beta) + np.abs(b2))
            per_channel = np.maximum(per_channel, np.abs(b2 - exact_b) / (bound_b + TINY))
        bad = per_channel > 1.0
        score = (float(bad.mean()), float(per_channel.max()))
        if best is None or score < best[0]:
            best = (score, eps, per_channel)
    if best is not None and best[0][0] == 0.0:
        # the epsilon that fits best (with large variances several fit within rounding)
        trusted = (tw, *((tb,) if tb else ()), *bn)
        deployed = (dw, *((db,) if b2 is not None else ()))
        return Fold(trusted, deployed, best[1], best[0][1])
    if best is None or best[0][0] > 0.5:
        return None  # most channels disagree: not this convolution and this BatchNorm
    score, eps, per_channel = best
    bad_channels = tuple(int(c) for c in np.flatnonzero(per_channel > 1.0))
    worst = int(np.argmax(per_channel))
    return FoldFailure(
        (tw, *((tb,) if tb else ()), *bn),
        (dw, *((db,) if b2 is not None else ())),
        bad_channels,
        {"eps": eps, "channel": worst, "error_in_bounds": float(per_channel[worst])},
    )
