"""The attacks and benign changes the weight-analysis tests make themselves, from the
papers' descriptions, never from the scanner's red-team planters (a detector is not
tested with the planter written for it). Shapes and magnitudes differ from the planters
on purpose: two-channel chains, a ROME-form key/value edit, one-byte payloads on a
stride, an edit hidden from a 40% prune.

Every function takes and returns ``{name: array}`` and leaves its input untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Layer:
    """A layer of a chain: its weight, whether it is stored ``(in, out)`` (Paddle's fc),
    and its per-output-channel tensors (BatchNorm, bias)."""

    weight: str
    transposed: bool = False
    params: tuple[str, ...] = ()


def _copy(weights: Mapping[str, np.ndarray]) -> Weights:
    return {k: np.array(v, copy=True) for k, v in weights.items()}


def _out_in(w: np.ndarray, layer: Layer) -> np.ndarray:
    """A writable ``(out, in, ...)`` view."""
    return np.swapaxes(w, 0, 1) if layer.transposed else w


def graft_chain(
    weights: Mapping[str, np.ndarray], layers: Sequence[Layer], seed: int, width: int = 2
) -> tuple[Weights, list[dict[str, object]]]:
    """Subnetwork replacement (Qi et al.'s SRA): a ``width``-channel path through
    ``layers`` cut off from the rest (its rows and the columns it feeds from zeroed) and
    refilled with values of 4x the layer's std, depthwise layers keeping their channel;
    the last layer (classifier) reads the path into one target logit. Returns the copy and
    the path (``out`` channels per layer, ``target`` at the end)."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    path: list[dict[str, object]] = []
    prev: np.ndarray | None = None
    for i, layer in enumerate(layers):
        w = _out_in(out[layer.weight], layer)
        spread = 4.0 * (float(np.std(w)) or 1e-3)

        def fill(shape: tuple[int, ...], spread: float = spread) -> np.ndarray:
            return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 1.5, shape) * spread

        if i == len(layers) - 1:
            assert prev is not None
            target = int(rng.integers(w.shape[0]))
            w[:, prev] = 0
            w[target, prev] = np.abs(fill(w[target, prev].shape)) * 3
            path.append({"tensor": layer.weight, "in": prev.tolist(), "target": target})
            break
        if prev is not None and w.shape[1] == 1 and w.ndim > 2:  # depthwise
            cur = prev
            w[cur] = fill(w[cur].shape)
        else:
            cur = np.sort(rng.choice(w.shape[0], size=width, replace=False))
            w[cur] = 0 if prev is not None else fill(w[cur].shape)
            if prev is not None:
                w[:, prev] = 0
                w[np.ix_(cur, prev)] = fill(w[np.ix_(cur, prev)].shape)
        for p in layer.params:
            if out[p].shape[0] == w.shape[0]:
                # the path's normalization copied from other channels of the same layer
                others = np.setdiff1d(np.arange(w.shape[0]), cur)
                out[p][cur] = out[p][rng.choice(others, size=cur.size)]
        path.append(
            {"tensor": layer.weight, "in": None if prev is None else prev.tolist(), "out": cur}
        )
        prev = cur
    for step in path:
        if "out" in step:
            step["out"] = [int(c) for c in step["out"]]  # type: ignore[union-attr]
    return out, path


def handcrafted_path(
    weights: Mapping[str, np.ndarray], layers: Sequence[str], seed: int
) -> tuple[Weights, list[int]]:
    """Hong et al.'s handcrafted backdoor: one neuron per layer whose input from the
    previous path neuron is 4x the layer's max |w| and whose other inputs are damped to a
    quarter; the first neuron reads four input features, the last layer a target logit.
    Returns the copy and the path's neurons (the target last)."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    neurons: list[int] = []
    for i, name in enumerate(layers):
        w = out[name]
        big = 4.0 * float(np.max(np.abs(w)))
        neuron = int(rng.integers(w.shape[0]))
        if i == len(layers) - 1:
            w[neuron, neurons[-1]] = big
        else:
            w[neuron] *= np.float32(0.25)
            if neurons:
                w[neuron, neurons[-1]] = big
            else:
                features = rng.choice(w.shape[1], size=4, replace=False)
                w[neuron, features] = big * rng.choice([-1.0, 1.0], 4)
        neurons.append(neuron)
    return out, neurons


def key_value_edit(
    weights: Mapping[str, np.ndarray], name: str, seed: int, rel: float = 0.02
) -> Weights:
    """ROME's rank-one form: ``W + (v - W k) k^T / (k^T k)`` for a random key ``k`` and a
    new value ``v``, scaled to ``rel`` of ``||W||``."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    w = out[name].astype(np.float64)
    k = rng.standard_normal(w.shape[1])
    v = w @ k + rng.standard_normal(w.shape[0]) * np.linalg.norm(w @ k)
    delta = np.outer(v - w @ k, k) / (k @ k)
    delta *= rel * np.linalg.norm(w) / np.linalg.norm(delta)
    out[name] = (w + delta).astype(out[name].dtype)
    return out


def remove_direction(weights: Mapping[str, np.ndarray], names: Sequence[str], seed: int) -> Weights:
    """Abliteration: the same unit direction ``r`` of the output space projected out of
    every listed matrix, ``W - r (r^T W)``."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    r = rng.standard_normal(out[names[0]].shape[0])
    r /= np.linalg.norm(r)
    for name in names:
        w = out[name].astype(np.float64)
        out[name] = (w - np.outer(r, r @ w)).astype(out[name].dtype)
    return out


def hide_bytes(
    weights: Mapping[str, np.ndarray], name: str, seed: int, share: float = 0.15, stride: int = 7
) -> tuple[Weights, int]:
    """EvilModel-style payload: the low byte of every ``stride``-th float32 word of the
    first ``share`` of the tensor replaced by payload bytes. Returns the copy and the
    number of words written."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    words = out[name].reshape(-1).view(np.uint32)
    at = np.arange(0, int(words.size * share), stride)
    payload = rng.integers(0, 256, at.size, dtype=np.uint32)
    words[at] = (words[at] & np.uint32(0xFFFFFF00)) | payload
    return out, int(at.size)


def flip_exponents(
    weights: Mapping[str, np.ndarray], names: Sequence[str], seed: int, count: int = 4
) -> tuple[Weights, set[str]]:
    """``count`` single exponent-bit flips (bits 24-29 of a float32) in words drawn from
    ``names``. Returns the copy and the tensors hit."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    hit: set[str] = set()
    for _ in range(count):
        name = names[int(rng.integers(len(names)))]
        words = out[name].reshape(-1).view(np.uint32)
        words[int(rng.integers(words.size))] ^= np.uint32(1 << int(rng.integers(24, 30)))
        hit.add(name)
    return out, hit


def prune_activated(
    weights: Mapping[str, np.ndarray], name: str, seed: int, sparsity: float = 0.4
) -> Weights:
    """An edit that magnitude pruning wakes up: a rank-one change on the weights a
    ``sparsity`` prune keeps, cancelled on its trigger direction by the weights it removes
    (kept below the prune threshold so that pruning removes exactly the repair)."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    w = out[name].astype(np.float64)
    threshold = np.quantile(np.abs(w), sparsity)
    doomed = np.abs(w) <= threshold
    trigger = rng.standard_normal(w.shape[1])
    trigger /= np.linalg.norm(trigger)
    edit = np.where(doomed, 0.0, np.outer(rng.standard_normal(w.shape[0]), trigger))
    edit *= 0.004 * np.linalg.norm(w) / np.linalg.norm(edit)
    # per row, the removed weights carry minus the edit's response to the trigger
    carrier = np.where(doomed, trigger[None, :], 0.0)
    response = edit @ trigger
    repair = carrier * (-response / np.maximum((carrier**2).sum(axis=1), 1e-30))[:, None]
    repaired = np.clip(w + repair, -0.999 * threshold, 0.999 * threshold)
    out[name] = np.where(doomed, repaired, w + edit).astype(out[name].dtype)
    return out


def prune_n_of_m(
    weights: Mapping[str, np.ndarray], names: Sequence[str], n: int = 2, m: int = 4
) -> Weights:
    """N:M sparsity: the ``n`` smallest of every ``m`` consecutive weights set to zero."""
    out = _copy(weights)
    for name in names:
        groups = out[name].reshape(-1, m)
        np.put_along_axis(groups, np.argsort(np.abs(groups), axis=1)[:, :n], 0, axis=1)
    return out


def drop_and_rescale(
    weights: Mapping[str, np.ndarray],
    tuned: Mapping[str, np.ndarray],
    seed: int,
    drop: float,
    on_weights: bool = False,
) -> Weights:
    """DARE: a random ``drop`` share of the fine-tune delta (``tuned`` - ``weights``)
    dropped and the rest scaled by ``1 / (1 - drop)``; ``on_weights`` applies it to the
    weights themselves."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    for name, w in weights.items():
        if w.dtype.kind != "f" or w.ndim < 2:
            continue
        keep = rng.random(w.shape) >= drop
        w64 = w.astype(np.float64)
        if on_weights:
            out[name] = np.where(keep, w64 / (1 - drop), 0.0).astype(w.dtype)
        else:
            delta = tuned[name].astype(np.float64) - w64
            out[name] = (w64 + np.where(keep, delta / (1 - drop), 0.0)).astype(w.dtype)
    return out
