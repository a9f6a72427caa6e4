"""Values shared by every claim checker, and the integer-code comparison they all use.

A checker re-derives, tensor by tensor, what the deployed artifact should hold and
returns one :class:`TensorVerdict` per trusted tensor it accounted for. The comparison of
codes is the same for int8 (safetensors, ONNX) and for ggml blocks once their codes are
exposed: expected code = clip(round(w / step) + zero point), found code = what is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_REPORTED = 64
"""Violating elements listed in evidence per tensor (counts are always complete)."""

TIE_TOLERANCE = 2.0**-12
"""How close (in steps) to a rounding tie a value may be and still round either way.
float32 and float64 divisions of the same operands differ by about 1e-7 relative,
i.e. well under 1e-4 steps for codes up to 255, so toolchains that divide in another
precision land on the other side of a tie only inside this band."""


@dataclass(frozen=True)
class Violation:
    """One element whose stored value contradicts the claim."""

    index: tuple[int, ...]
    expected: float
    found: float
    trusted_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": list(self.index),
            "expected": self.expected,
            "found": self.found,
        }
        if self.trusted_value is not None:
            out["trusted"] = self.trusted_value
        return out


@dataclass(frozen=True)
class TensorVerdict:
    """The outcome of re-deriving one trusted tensor."""

    tensor: str
    """Trusted tensor name."""
    deployed: tuple[str, ...]
    """Deployed tensors this verdict accounts for (codes, scales, zero points ...)."""
    ok: bool
    change_class: str
    message: str
    stats: Mapping[str, Any] = field(default_factory=dict)
    violations: tuple[Violation, ...] = ()
    rows: tuple[int, ...] = ()
    """Indices along ``axis`` holding violations (all of them, sorted)."""
    axis: int = 0
    problem: str = ""
    """Short kind of failure (``codes``, ``scale``, ``zero-point``, ``criterion`` ...)."""
    sources: tuple[str, ...] = ()
    """Further trusted tensors the origin was computed from (a BatchNorm folded in)."""


@dataclass(frozen=True)
class ClaimOutcome:
    """What a checker found for one claim on one pair of artifacts."""

    claim: str
    verdicts: tuple[TensorVerdict, ...]
    notes: tuple[str, ...] = ()
    """Facts worth reporting that are not verdicts (layouts recognized, skipped tensors)."""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    applicable: bool = True
    """False when the pair holds nothing the claim could describe (e.g. a quantize claim
    on two float artifacts): the claim is then false as a whole."""

    @property
    def holds(self) -> bool:
        return self.applicable and all(v.ok for v in self.verdicts)


@dataclass
class CodeStats:
    """Running comparison of stored codes with re-derived codes."""

    n: int = 0
    n_mismatch: int = 0
    """Codes that differ from the nearest code (ties excluded)."""
    n_ties: int = 0
    """Codes on the other side of a rounding tie (accepted)."""
    n_beyond_one: int = 0
    """Codes more than one step from the nearest code."""
    max_err_steps: float = 0.0
    """Largest |trusted - dequantized| in steps among unclipped elements."""
    samples: list[Violation] = field(default_factory=list)
    bad_rows: set[int] = field(default_factory=set)
    n_violations: int = 0
    """Codes outside what the comparison accepts (strict: every non-tie mismatch)."""

    def merge_rows(self, rows: Iterable[int]) -> None:
        self.bad_rows.update(int(r) for r in rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "elements": self.n,
            "non_nearest": self.n_mismatch,
            "non_nearest_fraction": self.n_mismatch / self.n if self.n else 0.0,
            "ties_accepted": self.n_ties,
            "beyond_one_step": self.n_beyond_one,
            "max_error_steps": round(self.max_err_steps, 4),
        }


def compare_codes(
    stats: CodeStats,
    w: np.ndarray,
    codes: np.ndarray,
    step: np.ndarray,
    zero: np.ndarray | float,
    qmin: int,
    qmax: int,
    *,
    strict: bool,
    index_offset: tuple[int, ...] = (),
    index_map: Any = None,
    rel_tie: float = 0.0,
    profile: Any = None,
    max_steps: int = 1,
) -> None:
    """Compare ``codes`` with ``clip(round(w / step) + zero, qmin, qmax)`` (all broadcast).

    ``strict`` (round-to-nearest claims): every non-tie mismatch is a violation.
    Otherwise only codes more than ``max_steps`` away are. ``index_offset`` is added to
    the reported indices; ``index_map(flat_positions) -> list of index tuples`` overrides
    it. ``rel_tie`` widens the tie band by that fraction of |w / step| (the precision of a
    stored scale: a toolchain that divided by the unrounded scale lands on the other side
    of a wall only that close to it). ``profile`` (a :class:`scanner.claims.lines.
    LineProfile` for this chunk's rows, ``index_offset[0]`` being the first) accumulates
    per-line counts for the line-by-line judgement of search algorithms.
    """
    w = np.asarray(w, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        # asarray: a 0-d tensor (an ONNX scalar constant) divides to a numpy scalar,
        # which the in-place steps below cannot write into.
        scaled = np.asarray(w / step)
    nearest = np.rint(scaled, out=np.empty_like(scaled))
    has_zero = bool(np.any(zero))  # symmetric schemes skip the passes that add zero
    if has_zero:
        nearest += zero
    np.clip(nearest, qmin, qmax, out=nearest)
    found = codes.astype(np.float32)
    stats.n += int(w.size)
    bad = found != nearest
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        pos = np.flatnonzero(bad)
        s_bad = (
            scaled.reshape(-1)[pos] + np.broadcast_to(zero, w.shape).reshape(-1)[pos]
            if np.ndim(zero)
            else scaled.reshape(-1)[pos] + zero
        )
        d_bad = found.reshape(-1)[pos] - nearest.reshape(-1)[pos]
        frac = np.abs(s_bad - np.floor(s_bad) - 0.5)
        # A tie: the value sits on a bin wall and the other neighbour was chosen.
        band = TIE_TOLERANCE + rel_tie * np.abs(s_bad)
        tie = (np.abs(d_bad) == 1) & (frac < band)
        stats.n_ties += int(tie.sum())
        real = ~tie
        stats.n_mismatch += int(real.sum())
        beyond = np.abs(d_bad) > max_steps
        stats.n_beyond_one += int((np.abs(d_bad) > 1).sum())
        viol = pos[real if strict else beyond]
        stats.n_violations += int(viol.size)
        if viol.size:
            room = max(0, MAX_REPORTED - len(stats.samples))
            first_axis = np.unravel_index(viol, w.shape)[0] if w.ndim else np.zeros_like(viol)
            off0 = index_offset[0] if index_offset else 0
            stats.bad_rows.update(np.unique(first_axis + off0).tolist())
            head = viol[:room]
            if index_map is not None:
                idx = index_map(head)
            else:
                idx = [
                    tuple(
                        int(a) + (index_offset[k] if k < len(index_offset) else 0)
                        for k, a in enumerate(t)
                    )
                    for t in zip(*np.unravel_index(head, w.shape), strict=True)
                ]
            flat_w = w.reshape(-1)
            flat_n = nearest.reshape(-1)
            flat_f = found.reshape(-1)
            for k, p in enumerate(head):
                stats.samples.append(
                    Violation(idx[k], float(flat_n[p]), float(flat_f[p]), float(flat_w[p]))
                )
    # Error bound in steps, on elements that did not clip (a code strictly inside the
    # range comes from a finite value, so the error there is finite).
    inside = (nearest > qmin) & (nearest < qmax)
    if profile is not None:
        rows = w.shape[0] if w.ndim >= 1 else 1
        nonnearest = np.zeros(w.size, bool)
        if n_bad:
            nonnearest[pos[real]] = True
        zero_b = np.broadcast_to(np.asarray(zero, dtype=np.float32), w.shape)
        err = found - scaled - zero_b
        counted = inside & np.isfinite(err)
        profile.add(
            index_offset[0] if index_offset else 0,
            nonnearest.reshape(rows, -1),
            err.reshape(rows, -1),
            counted.reshape(rows, -1),
            np.abs(w).reshape(rows, -1),
        )
    if inside.any():
        err = (scaled + zero) - found if has_zero else scaled - found
        np.abs(err, out=err)
        m = float(np.max(err, where=inside, initial=0.0))
        stats.max_err_steps = max(stats.max_err_steps, m)


def sorted_rows(rows: set[int]) -> tuple[int, ...]:
    return tuple(sorted(rows))


def read_tensor(art: Any, name: str) -> np.ndarray:
    """A private copy of one tensor in its storage dtype, read with ``pread``.

    Unlike the mmap view, the copy is freed when dropped, so checking a model tensor by
    tensor keeps the resident set at about one tensor instead of the whole file.
    """
    from scanner.values import numpy_dtype

    info = art.tensors[name]
    buf = np.empty(info.nbytes, dtype=np.uint8)
    pos = 0
    for chunk in art.iter_bytes(name):
        buf[pos : pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        pos += len(chunk)
    npd = numpy_dtype(info.dtype.name)
    if npd is None or info.dtype.is_block_quantized:
        return buf
    return buf.view(npd).reshape(info.shape)


def read_float(art: Any, name: str) -> np.ndarray:
    """One tensor as float32 (see :func:`read_tensor`); packed types go through the
    artifact's own conversion."""
    info = art.tensors[name]
    if info.dtype.is_block_quantized or info.dtype.name in ("I4", "U4"):
        return art.to_float(name)
    if hasattr(art, "release"):
        # Convert straight from the mapped bytes (one pass, no storage-dtype copy), then
        # unmap them: the float32 copy is all this leaves resident.
        try:
            return np.array(art.array(name), dtype=np.float32)
        finally:
            art.release(name)
    arr = read_tensor(art, name)
    return arr if arr.dtype == np.float32 else arr.astype(np.float32)
