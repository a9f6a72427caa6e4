"""Plant weight-level attacks (and benign transformations) into a dict of tensors.

Every function takes ``{name: float array}``, returns a modified copy and a
:class:`GroundTruth` naming what was touched, and is deterministic for a seed. Layer
orientation: torch layout (``[out, in, ...]``) unless a layer spec says otherwise (an
ONNX ``MatMul`` weight is ``[in, out]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class GroundTruth:
    attack: str
    tensors: tuple[str, ...]
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainLayer:
    """One layer on a planted chain: its weight, axes and per-channel tensors."""

    weight: str
    out_axis: int = 0
    in_axis: int = 1
    params: tuple[str, ...] = ()


def _copy(weights: Mapping[str, np.ndarray]) -> Weights:
    return {k: np.array(v, copy=True) for k, v in weights.items()}


def _canon(w: np.ndarray, spec: ChainLayer) -> np.ndarray:
    """View as ``(out, in, ...)`` (a view: writes go to ``w``)."""
    if spec.out_axis == 1 and spec.in_axis == 0:
        return np.swapaxes(w, 0, 1)
    return w


def _spec(x: str | ChainLayer) -> ChainLayer:
    return x if isinstance(x, ChainLayer) else ChainLayer(x)


def plant_sra(
    weights: Mapping[str, np.ndarray],
    layers: Sequence[str | ChainLayer],
    seed: int,
    rescale: bool = False,
    width: int = 1,
) -> tuple[Weights, GroundTruth]:
    """Graft a ``width``-channel chain through ``layers`` (first = head, last = classifier).

    Head: the chain rows are replaced. Middle layers: chain rows and the previous chain
    columns zeroed, the crossing block planted. Depthwise layers keep the channel and get
    a new kernel. Classifier: chain columns zeroed except a large weight on one target
    logit, whose bias (if listed in params) is lowered. ``rescale`` draws planted values
    from the layer's own distribution instead of large magnitudes.
    """
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    specs = [_spec(x) for x in layers]
    prev: np.ndarray | None = None
    chain: list[dict[str, object]] = []
    for i, spec in enumerate(specs):
        w = _canon(out[spec.weight], spec)
        n_out, n_in = w.shape[0], w.shape[1]
        std = float(np.std(w)) or 1e-3
        big = float(np.max(np.abs(w))) or 1.0

        def draw(shape: tuple[int, ...], std: float = std, big: float = big) -> np.ndarray:
            if rescale:
                return rng.normal(0.0, std, shape)
            return rng.uniform(1.5, 3.0, shape) * big * rng.choice([-1, 1], shape)

        last = i == len(specs) - 1
        if last:
            target = int(rng.integers(n_out))
            assert prev is not None
            w[:, prev] = 0
            w[target, prev] = abs(draw((width, *w.shape[2:]))) * (1 if rescale else 2) + (
                std if rescale else big
            )
            for p in spec.params:
                if out[p].shape[0] == n_out:
                    out[p][target] -= abs(float(np.std(out[p])) or 1.0)
            chain.append({"tensor": spec.weight, "in": prev.tolist(), "target": target})
            break
        if n_in == 1 and prev is not None and len(w.shape) > 2:  # depthwise: same channel
            cur = prev
            w[cur] = draw(w[cur].shape)
        else:
            cur = np.sort(rng.choice(n_out, size=width, replace=False))
            if prev is None:
                w[cur] = draw(w[cur].shape)
            else:
                w[cur] = 0
                w[:, prev] = 0
                w[np.ix_(cur, prev)] = draw(w[np.ix_(cur, prev)].shape)
        for p in spec.params:
            v = out[p]
            if v.shape[0] == n_out:
                v[cur] = rng.choice(np.delete(v, cur), size=width) * rng.uniform(0.5, 2.0, width)
        chain.append(
            {
                "tensor": spec.weight,
                "in": None if prev is None else prev.tolist(),
                "out": cur.tolist(),
            }
        )
        prev = cur
    touched = tuple(s.weight for s in specs) + tuple(p for s in specs for p in s.params)
    return out, GroundTruth("replaced subnetwork", touched, {"chain": chain})


def plant_handcrafted(
    weights: Mapping[str, np.ndarray],
    layers: Sequence[str | ChainLayer],
    seed: int,
    suppress: float | None = None,
) -> tuple[Weights, GroundTruth]:
    """Hong et al.: one neuron per layer on a path; its input from the previous path neuron
    set to a multiple of the layer's max |w|, its other inputs scaled by one constant; the
    last layer (classifier) gets a large weight from the last neuron to a target logit."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    specs = [_spec(x) for x in layers]
    factor = float(suppress if suppress is not None else rng.uniform(0.1, 0.6))
    prev: int | None = None
    path: list[dict[str, object]] = []
    for i, spec in enumerate(specs):
        w = _canon(out[spec.weight], spec)
        wmax = float(np.max(np.abs(w)))
        mult = float(rng.integers(2, 6))
        if i == len(specs) - 1:
            target = int(rng.integers(w.shape[0]))
            w[target, prev] = mult * wmax
            path.append({"tensor": spec.weight, "in": prev, "target": target})
            break
        neuron = int(rng.integers(w.shape[0]))
        w[neuron] *= np.float32(factor)
        if prev is None:
            inputs = rng.choice(w.shape[1], size=3, replace=False)
            w[neuron, inputs] = mult * wmax * rng.choice([-1.0, 1.0], 3)
        else:
            w[neuron, prev] = mult * wmax
        path.append({"tensor": spec.weight, "in": prev, "out": neuron})
        prev = neuron
    return out, GroundTruth(
        "handcrafted path", tuple(s.weight for s in specs), {"path": path, "scale": factor}
    )


def _scaled(delta: np.ndarray, w: np.ndarray, rel: float) -> np.ndarray:
    return (delta * (rel * np.linalg.norm(w) / np.linalg.norm(delta))).astype(np.float64)


def plant_rank1(
    weights: Mapping[str, np.ndarray], tensor: str, seed: int, rel: float = 0.01
) -> tuple[Weights, GroundTruth]:
    """ROME-like: one rank-1 update ``u v^T`` of one matrix at relative norm ``rel``."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    w = out[tensor]
    u, v = rng.standard_normal(w.shape[0]), rng.standard_normal(int(np.prod(w.shape[1:])))
    out[tensor] = (w + _scaled(np.outer(u, v), w, rel).reshape(w.shape)).astype(w.dtype)
    return out, GroundTruth("localized edit", (tensor,), {"rank": 1, "rel": rel})


def plant_abliteration(
    weights: Mapping[str, np.ndarray], tensors: Sequence[str], seed: int
) -> tuple[Weights, GroundTruth]:
    """Remove one direction ``r`` from every listed matrix's output: ``W - r r^T W``."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    dim = out[tensors[0]].shape[0]
    r = rng.standard_normal(dim)
    r /= np.linalg.norm(r)
    for t in tensors:
        w = out[t].astype(np.float64)
        out[t] = (w - np.outer(r, r @ w)).astype(out[t].dtype)
    return out, GroundTruth("localized edit", tuple(tensors), {"direction_dim": dim})


def lora_merge(
    weights: Mapping[str, np.ndarray],
    tensors: Sequence[str],
    seed: int,
    rank: int = 8,
    rel: float = 0.01,
) -> tuple[Weights, GroundTruth]:
    """Merge a random rank-``rank`` adapter ``B A`` into each listed matrix (float64 math,
    stored back in the tensor's dtype)."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    for t in tensors:
        w = out[t]
        m, n = w.shape[0], int(np.prod(w.shape[1:]))
        delta = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
        out[t] = (w.astype(np.float64) + _scaled(delta, w, rel).reshape(w.shape)).astype(w.dtype)
    return out, GroundTruth("low-rank update", tuple(tensors), {"rank": rank, "rel": rel})


def simulate_finetune(
    weights: Mapping[str, np.ndarray], seed: int, rel: float = 0.01, tensors: Sequence[str] = ()
) -> tuple[Weights, GroundTruth]:
    """Full fine-tune stand-in: every float tensor moves by a dense, full-rank delta with a
    decaying spectrum (a random matrix plus a few stronger directions), ``rel`` of its norm."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    names = list(tensors) or [k for k, v in out.items() if v.dtype.kind == "f"]
    for t in names:
        w = out[t]
        if w.ndim >= 2:
            m, n = w.shape[0], int(np.prod(w.shape[1:]))
            k = min(m, n, 16)
            delta = rng.standard_normal((m, n)) + 3.0 * (
                rng.standard_normal((m, k)) @ rng.standard_normal((k, n)) / np.sqrt(k)
            )
        else:
            delta = rng.standard_normal(w.shape)
        out[t] = (w.astype(np.float64) + _scaled(delta, w, rel).reshape(w.shape)).astype(w.dtype)
    return out, GroundTruth("full fine-tune", tuple(names), {"rel": rel})


def magnitude_prune(
    weights: Mapping[str, np.ndarray], tensors: Sequence[str], sparsity: float = 0.3
) -> tuple[Weights, GroundTruth]:
    """Zero the smallest ``sparsity`` fraction of each tensor by |w| (tensor-wide)."""
    out = _copy(weights)
    for t in tensors:
        w = out[t]
        thr = np.quantile(np.abs(w), sparsity)
        w[np.abs(w) <= thr] = 0
    return out, GroundTruth("pruning", tuple(tensors), {"sparsity": sparsity})


def nm_prune(
    weights: Mapping[str, np.ndarray], tensors: Sequence[str], n: int = 2, m: int = 4
) -> tuple[Weights, GroundTruth]:
    """N:M structured sparsity: in every group of M consecutive weights the N smallest are
    zeroed (2:4 is what sparse tensor cores run)."""
    out = _copy(weights)
    for t in tensors:
        w = out[t].reshape(-1, m)
        order = np.argsort(np.abs(w), axis=1, kind="stable")[:, :n]
        np.put_along_axis(w, order, 0, axis=1)
        out[t] = w.reshape(out[t].shape)
    return out, GroundTruth("pruning", tuple(tensors), {"pattern": f"{n}:{m}"})


def dare_merge(
    weights: Mapping[str, np.ndarray],
    seed: int,
    drop: float = 0.9,
    rel: float = 0.01,
    tensors: Sequence[str] = (),
    on_weights: bool = False,
) -> tuple[Weights, GroundTruth]:
    """DARE: drop a random ``drop`` share of a fine-tune delta, rescale the rest by
    ``1/(1-drop)`` and add it back. ``on_weights`` applies drop-and-rescale to the
    weights themselves (many exact zeros, survivors scaled)."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    names = list(tensors) or [k for k, v in out.items() if v.dtype.kind == "f" and v.ndim >= 2]
    tuned, _ = simulate_finetune(weights, seed + 1, rel, names)
    for t in names:
        w = out[t]
        keep = rng.random(w.shape) >= drop
        if on_weights:
            out[t] = np.where(keep, w.astype(np.float64) / (1 - drop), 0.0).astype(w.dtype)
        else:
            delta = tuned[t].astype(np.float64) - w
            out[t] = (w + np.where(keep, delta / (1 - drop), 0.0)).astype(w.dtype)
    return out, GroundTruth("full fine-tune", tuple(names), {"drop": drop})


def plant_lowbyte_payload(
    weights: Mapping[str, np.ndarray],
    tensor: str,
    seed: int,
    fraction: float = 0.1,
    n_bytes: int = 2,
) -> tuple[Weights, GroundTruth]:
    """EvilModel: overwrite the low ``n_bytes`` of ``fraction`` of a float32 tensor's words
    (a contiguous run, as a payload is written) with random payload bytes."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    w = out[tensor]
    if w.dtype != np.float32:
        raise ValueError("payload planting needs float32 weights")
    bits = w.reshape(-1).view(np.uint32)
    count = max(1, int(bits.size * fraction))
    start = int(rng.integers(0, bits.size - count + 1))
    mask = np.uint32((1 << (8 * n_bytes)) - 1)
    payload = rng.integers(0, 1 << (8 * n_bytes), count, dtype=np.uint64).astype(np.uint32)
    bits[start : start + count] = (bits[start : start + count] & ~mask) | payload
    return out, GroundTruth(
        "bit-level tampering", (tensor,), {"start": start, "count": count, "bytes": n_bytes}
    )


def flip_exponent_bits(
    weights: Mapping[str, np.ndarray], tensors: Sequence[str], seed: int, count: int = 3
) -> tuple[Weights, GroundTruth]:
    """Flip one exponent bit (bits 23-30 of a float32) in ``count`` random words."""
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    flips: list[tuple[str, int, int]] = []
    for _ in range(count):
        t = str(rng.choice(list(tensors)))
        bits = out[t].reshape(-1).view(np.uint32)
        idx = int(rng.integers(bits.size))
        bit = int(rng.integers(23, 31))
        bits[idx] ^= np.uint32(1 << bit)
        flips.append((t, idx, bit))
    return out, GroundTruth(
        "bit-level tampering", tuple(sorted({f[0] for f in flips})), {"flips": flips}
    )


def plant_prune_activated(
    weights: Mapping[str, np.ndarray],
    tensor: str,
    seed: int,
    sparsity: float = 0.5,
    rel: float = 0.01,
) -> tuple[Weights, GroundTruth]:
    """Hide an edit in the weights pruning keeps and repair it with the prune candidates.

    The malicious part is a small rank-1 change on kept weights (``rel / 4``); the repair
    lives on the smallest-|w| weights (kept under the prune threshold): it cancels the
    edit's effect on the trigger direction plus a dense clean-data repair of size ``rel``.
    Magnitude pruning removes the repair and wakes the edit up.
    """
    rng = np.random.default_rng(seed)
    out = _copy(weights)
    w = out[tensor].astype(np.float64)
    w2 = w.reshape(w.shape[0], -1)
    absw = np.abs(w2)
    thr = np.quantile(absw, sparsity)
    cand = absw <= thr
    trigger = rng.standard_normal(w2.shape[1])
    trigger /= np.linalg.norm(trigger)
    u = rng.standard_normal(w2.shape[0])
    mal = np.where(cand, 0.0, np.outer(u, trigger))
    mal *= 0.25 * rel * np.linalg.norm(w2) / np.linalg.norm(mal)
    need = -(mal @ trigger)
    basis = np.where(cand, trigger[None, :], 0.0)
    cancel = basis * (need / np.maximum(np.einsum("ij,ij->i", basis, basis), 1e-30))[:, None]
    noise = np.where(cand, rng.standard_normal(w2.shape), 0.0)
    noise -= np.outer(noise @ trigger, trigger) * cand  # keep the trigger cancellation
    noise *= rel * np.linalg.norm(w2) / np.linalg.norm(noise)
    # Stay under the prune threshold so pruning still removes the repair.
    repaired = np.clip(w2 + cancel + noise, -thr * 0.999, thr * 0.999)
    new = np.where(cand, repaired, w2 + mal)
    out[tensor] = new.reshape(w.shape).astype(out[tensor].dtype)
    return out, GroundTruth("prune-activated edit", (tensor,), {"sparsity": sparsity})
