"""Pair trusted and deployed tensors by value under the layout changes converters make.

A conversion never changes a value; it may store it elsewhere and differently:

* **reshaped**: the same elements in the same order under another shape (squeeze /
  unsqueeze, PReLU slopes ``[C]`` stored as ``[C, 1, 1]``, an LSTM matrix ``[4H, I]``
  as ``[1, 4H, I]``);
* **transposed**: any permutation of axes (``Linear`` ``[out, in]`` stored ``[in, out]``
  for ``MatMul``);
* **gates reordered**: the gate blocks of a recurrent weight, where the artifact's
  graph reads it in an ``LSTM`` / ``GRU`` (PyTorch stores LSTM gates i, f, g, o and ONNX
  i, o, f, c; GRU r, z, n and z, r, n);
* **concatenated / split**: several tensors stored as one (an LSTM's ``B`` is the input
  and hidden biases side by side; fused QKV projections) or one as several, each part
  possibly transposed or gate-reordered as above.

Candidates are found by content: a byte digest (reshapes), an order-free digest of the
element bit patterns (any rearrangement), and a digest that adds up over parts (so the
parts of a concatenation sum to the whole). A candidate is accepted only when the
rearranged tensor equals the other element for element, bit for bit.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.claims.base import read_tensor

GATE_ORDERS = {
    # op: (blocks of the PyTorch order rearranged into ONNX order, and back)
    "LSTM": ((0, 3, 1, 2), (0, 2, 3, 1)),
    "GRU": ((1, 0, 2), (1, 0, 2)),
}
MAX_PARTS = 4
"""Most tensors one tensor may be concatenated from (4: bidirectional LSTM biases)."""
MAX_CANDIDATES = 24


@dataclass(frozen=True)
class Match:
    trusted: tuple[str, ...]
    deployed: tuple[str, ...]
    kind: str
    """``reshaped``, ``transposed``, ``gates reordered``, ``concatenated``, ``split``."""
    how: str
    stats: dict[str, Any] = field(default_factory=dict)


class Side:
    """Tensors of one artifact still unpaired, read once and fingerprinted lazily."""

    def __init__(self, art: Artifact, names: Iterable[str], gates: dict[str, str]) -> None:
        self.art = art
        self.names = [n for n in names if n in art.tensors]
        self.gates = gates
        """Tensor -> recurrent operator that reads it in this artifact's graph, when the
        other artifact has no graph (its gate order is then the framework's own)."""
        self._arrays: dict[str, np.ndarray] = {}
        self._sorted: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = read_tensor(self.art, name)
        return self._arrays[name]

    def dtype(self, name: str) -> str:
        return self.art.tensors[name].dtype.name

    def numel(self, name: str) -> int:
        return self.art.tensors[name].n_elements

    def bits(self, name: str) -> np.ndarray:
        return _bits(self.array(name))

    def sorted_bits(self, name: str) -> np.ndarray:
        if name not in self._sorted:
            self._sorted[name] = np.sort(self.bits(name))
        return self._sorted[name]

    def byte_digest(self, name: str) -> str:
        return hashlib.blake2b(np.ascontiguousarray(self.array(name)).tobytes()).hexdigest()

    def bag_digest(self, name: str) -> int:
        """Order-free, additive over parts: the sum of a mixed hash of every element."""
        return _bag(self.bits(name))

    def drop(self, names: Iterable[str]) -> None:
        gone = set(names)
        self.names = [n for n in self.names if n not in gone]
        for n in gone:
            self._arrays.pop(n, None)
            self._sorted.pop(n, None)


def _bits(a: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(a).reshape(-1)
    if flat.dtype.kind in "fc" or flat.dtype.kind == "V":
        width = flat.dtype.itemsize
        return flat.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width])
    if flat.dtype == np.bool_:
        return flat.view(np.uint8)
    return flat


def _bag(bits: np.ndarray) -> int:
    x = bits.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        return int(np.sum(x, dtype=np.uint64))


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


# ------------------------------------------------------------------- rearrangements


Rearrange = Callable[[np.ndarray], np.ndarray]


def _rearrangements(shape: tuple[int, ...], gate_op: str | None) -> list[tuple[str, Rearrange]]:
    """Ways a tensor of ``shape`` may have been rearranged: as it is, with its axes
    permuted, and with its gate blocks reordered when ``gate_op`` (the recurrent operator
    the other artifact reads the tensor with) says so. Each maps an array to flat order."""
    out: list[tuple[str, Rearrange]] = [("", lambda a: a.reshape(-1))]
    ndim = len(shape)
    if 2 <= ndim <= 4:
        for perm in itertools.permutations(range(ndim)):
            moved = [p for p in perm if shape[p] != 1]
            if moved != sorted(moved):  # moving only unit axes is a reshape
                out.append(
                    (
                        f"transposed {list(perm)}",
                        lambda a, perm=perm: np.ascontiguousarray(np.transpose(a, perm)).reshape(
                            -1
                        ),
                    )
                )
    if gate_op in GATE_ORDERS and ndim >= 1:
        k = len(GATE_ORDERS[gate_op][0])
        rows = int(np.prod(shape[:-1])) if ndim >= 2 else int(np.prod(shape))
        cols = shape[-1] if ndim >= 2 else 1
        if rows % k == 0:
            for order in sorted(set(GATE_ORDERS[gate_op])):
                out.append(
                    (
                        f"{gate_op} gates {list(order)}",
                        lambda a, order=order: a.reshape(k, -1, cols)[list(order)].reshape(-1),
                    )
                )
    return out


def _options(side: Side, name: str, gate_op: str | None = None) -> list[tuple[str, np.ndarray]]:
    """``name``'s values under each rearrangement, as (description, flat elements)."""
    a = side.array(name)
    return [(how, fn(a)) for how, fn in _rearrangements(a.shape, gate_op)]


def _as_target(a: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The target tensor's own readings: flat, and transposed for matrices."""
    out = [("", a.reshape(-1))]
    sq = a.reshape(_squeezed(a.shape)) if _squeezed(a.shape) else a.reshape(-1)
    if sq.ndim == 2:
        out.append(("transposed", np.ascontiguousarray(sq.T).reshape(-1)))
    return out


def _same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    return x.shape == y.shape and np.array_equal(_bits(x), _bits(y))


def _tile(
    whole: np.ndarray, parts: list[tuple[str, list[tuple[str, np.ndarray]]]]
) -> list[tuple[str, str]] | None:
    """An order of ``parts`` (each in one of its readings) that laid end to end is
    ``whole``; ``[(part, reading), ...]`` or ``None``."""
    n = whole.size

    def go(offset: int, left: list[int]) -> list[tuple[str, str]] | None:
        if offset == n:
            return [] if not left else None
        for i in left:
            name, readings = parts[i]
            for how, flat in readings:
                end = offset + flat.size
                if end <= n and _same_bits(whole[offset:end], flat):
                    rest = go(end, [j for j in left if j != i])
                    if rest is not None:
                        return [(name, how), *rest]
        return None

    return go(0, list(range(len(parts))))


# ------------------------------------------------------------------------ matching


def match_all(trusted: Side, deployed: Side) -> list[Match]:
    """Pair what can be paired; the sides keep what is left."""
    out: list[Match] = []
    out += _reshaped(trusted, deployed)
    out += _rearranged(trusted, deployed)
    out += _concatenated(deployed, trusted, split=False)
    out += _concatenated(trusted, deployed, split=True)
    return out


def _by(side: Side, key: Callable[[str], Any]) -> dict[Any, list[str]]:
    groups: dict[Any, list[str]] = defaultdict(list)
    for n in side.names:
        if side.numel(n):
            groups[key(n)].append(n)
    return groups


def _reshaped(t: Side, d: Side) -> list[Match]:
    out = []
    t_groups = _by(t, lambda n: (t.dtype(n), t.numel(n), t.byte_digest(n)))
    for dn in list(d.names):
        if not d.numel(dn):
            continue
        bucket = t_groups.get((d.dtype(dn), d.numel(dn), d.byte_digest(dn)))
        if not bucket:
            continue
        tn = bucket.pop(0)
        ts, ds = t.art.tensors[tn].shape, d.art.tensors[dn].shape
        how = f"reshaped {list(ts)} -> {list(ds)}" if ts != ds else "renamed"
        out.append(Match((tn,), (dn,), "reshaped" if ts != ds else "renamed", how))
        t.drop([tn])
        d.drop([dn])
    return out


def _rearranged(t: Side, d: Side) -> list[Match]:
    out = []
    t_groups = _by(t, lambda n: (t.dtype(n), t.numel(n), t.bag_digest(n)))
    for dn in list(d.names):
        if not d.numel(dn):
            continue
        bucket = t_groups.get((d.dtype(dn), d.numel(dn), d.bag_digest(dn)), [])
        target = d.array(dn).reshape(-1)
        for tn in list(bucket):
            gate_op = d.gates.get(dn) or t.gates.get(tn)
            hit = _tile(target, [(tn, _options(t, tn, gate_op)[1:])])
            if hit is None:
                continue
            how = hit[0][1]
            kind = "gates reordered" if "gates" in how else "transposed"
            out.append(Match((tn,), (dn,), kind, how))
            bucket.remove(tn)
            t.drop([tn])
            d.drop([dn])
            break
    return out


def _concatenated(whole_side: Side, part_side: Side, *, split: bool) -> list[Match]:
    """Tensors of ``whole_side`` that are several tensors of ``part_side`` laid end to end
    (``split``: the whole is trusted, the parts deployed; otherwise the reverse)."""
    out = []
    for wn in list(whole_side.names):
        n = whole_side.numel(wn)
        if not n or wn not in whole_side.names:
            continue
        w_sorted = whole_side.sorted_bits(wn)
        w_dtype = whole_side.dtype(wn)
        cands = []
        for pn in part_side.names:
            if part_side.dtype(pn) != w_dtype or not 0 < part_side.numel(pn) < n:
                continue
            sample = part_side.bits(pn)[:: max(1, part_side.numel(pn) // 16)][:16]
            pos = np.searchsorted(w_sorted, sample)
            if np.all(pos < n) and np.array_equal(w_sorted[np.minimum(pos, n - 1)], sample):
                cands.append(pn)
        if len(cands) < 2:
            continue
        cands = cands[:MAX_CANDIDATES]
        want = whole_side.bag_digest(wn)
        sizes = {pn: part_side.numel(pn) for pn in cands}
        bags = {pn: part_side.bag_digest(pn) for pn in cands}
        found = None
        whole_gate = whole_side.gates.get(wn)
        for k in range(2, MAX_PARTS + 1):
            for combo in itertools.combinations(cands, k):
                if sum(sizes[p] for p in combo) != n:
                    continue
                if sum(bags[p] for p in combo) % (1 << 64) != want:
                    continue
                parts = [
                    (p, _options(part_side, p, whole_gate or part_side.gates.get(p))) for p in combo
                ]
                for how_w, flat in _as_target(whole_side.array(wn)):
                    order = _tile(flat, parts)
                    if order is not None:
                        found = (combo, how_w, order)
                        break
                if found:
                    break
            if found:
                break
        if found is None:
            continue
        combo, how_w, order = found
        desc = ", ".join(f"{p}{' (' + h + ')' if h else ''}" for p, h in order)
        whole_desc = f"{wn}{' (transposed)' if how_w else ''}"
        if split:
            m = Match(
                (wn,),
                tuple(p for p, _ in order),
                "split",
                f"{whole_desc} split into {desc}",
                {"parts": [p for p, _ in order]},
            )
        else:
            m = Match(
                tuple(p for p, _ in order),
                (wn,),
                "concatenated",
                f"{desc} concatenated into {whole_desc}",
                {"parts": [p for p, _ in order]},
            )
        out.append(m)
        whole_side.drop([wn])
        part_side.drop(combo)
    return out


@dataclass(frozen=True)
class NearMatch:
    """A deployed tensor that is a trusted one, laid out as ``how``, except some rows."""

    trusted: str
    deployed: str
    how: str
    axis: int
    """The deployed tensor's first axis longer than 1."""
    rows: tuple[int, ...]
    """Indices along ``axis`` holding changed elements."""
    changed: int
    total: int


def near_matches(t: Side, d: Side, threshold: float = 0.5) -> list[NearMatch]:
    """Pairs left over that agree on at least ``threshold`` of their elements under some
    layout: the same tensor with some values changed, to be reported where they differ."""
    out = []
    for dn in list(d.names):
        n = d.numel(dn)
        if not n:
            continue
        target = d.array(dn)
        flat = _bits(target)
        best: tuple[float, str, str, np.ndarray] | None = None
        for tn in t.names:
            if t.numel(tn) != n or t.dtype(tn) != d.dtype(dn):
                continue
            for how, option in _options(t, tn, d.gates.get(dn) or t.gates.get(tn)):
                same = _bits(option) == flat
                frac = float(same.mean())
                if frac >= threshold and (best is None or frac > best[0]):
                    best = (frac, tn, how, same)
        if best is None:
            continue
        _, tn, how, same = best
        axis = next((i for i, n_i in enumerate(target.shape) if n_i > 1), 0)
        lead = int(np.prod(target.shape[: axis + 1])) if target.ndim else 1
        bad = ~same.reshape(lead, -1).all(axis=1)
        out.append(
            NearMatch(
                tn,
                dn,
                how or "same layout",
                axis,
                tuple(int(r) for r in np.flatnonzero(bad)),
                int((~same).sum()),
                n,
            )
        )
        t.drop([tn])
        d.drop([dn])
    return out


@dataclass(frozen=True)
class NearPart:
    name: str
    how: str
    rows: tuple[int, ...]
    """Indices along the part's first axis longer than 1 holding changed elements."""
    axis: int
    changed: int


@dataclass(frozen=True)
class NearTile:
    """A tensor that is several tensors laid end to end except in some elements."""

    whole: str
    whole_side: str
    """``deployed`` (parts trusted: a concatenation) or ``trusted`` (a split)."""
    parts: tuple[NearPart, ...]


def near_tiles(whole_side: Side, part_side: Side, *, split: bool) -> list[NearTile]:
    """Left-over tensors of ``whole_side`` that tile from ``part_side`` tensors on at least
    90% of their elements, each part on at least half of its own: a concatenation (or
    split) with some values changed, reported per part."""
    out = []
    for wn in list(whole_side.names):
        n = whole_side.numel(wn)
        if not n:
            continue
        w_sorted = whole_side.sorted_bits(wn)
        cands = []
        for pn in part_side.names:
            if part_side.dtype(pn) != whole_side.dtype(wn) or not 0 < part_side.numel(pn) < n:
                continue
            sample = part_side.bits(pn)[:: max(1, part_side.numel(pn) // 16)][:16]
            pos = np.minimum(np.searchsorted(w_sorted, sample), n - 1)
            if np.mean(w_sorted[pos] == sample) >= 0.75:
                cands.append(pn)
        cands = cands[:MAX_CANDIDATES]
        found = None
        for k in range(2, MAX_PARTS + 1):
            for combo in itertools.combinations(cands, k):
                if sum(part_side.numel(p) for p in combo) != n:
                    continue
                for _, flat in _as_target(whole_side.array(wn)):
                    tiled = _near_tile(flat, part_side, combo, whole_side.gates.get(wn))
                    if tiled is not None:
                        found = (combo, tiled)
                        break
                if found:
                    break
            if found:
                break
        if found is None:
            continue
        combo, parts = found
        out.append(NearTile(wn, "trusted" if split else "deployed", tuple(parts)))
        whole_side.drop([wn])
        part_side.drop(combo)
    return out


def _near_tile(
    flat: np.ndarray, side: Side, combo: tuple[str, ...], gate_op: str | None
) -> list[NearPart] | None:
    target = _bits(flat)
    offset, left, parts, equal = 0, list(combo), [], 0
    while left:
        best = None
        for name in left:
            a = side.array(name)
            for how, fn in _rearrangements(a.shape, gate_op or side.gates.get(name)):
                chunk = target[offset : offset + a.size]
                same = _bits(fn(a)) == chunk
                frac = float(same.mean())
                if frac >= 0.5 and (best is None or frac > best[0]):
                    best = (frac, name, how, fn, same)
        if best is None:
            return None
        _, name, how, fn, same = best
        a = side.array(name)
        index = fn(np.arange(a.size).reshape(a.shape))  # flat position -> original element
        changed = np.zeros(a.size, dtype=bool)
        changed[index[~same]] = True
        axis = next((i for i, d in enumerate(a.shape) if d > 1), 0)
        lead = int(np.prod(a.shape[: axis + 1])) if a.ndim else 1
        rows = np.flatnonzero(changed.reshape(lead, -1).any(axis=1))
        parts.append(
            NearPart(
                name, how or "as stored", tuple(int(r) for r in rows), axis, int(changed.sum())
            )
        )
        equal += int(same.sum())
        offset += a.size
        left.remove(name)
    return parts if equal >= 0.9 * target.size else None
