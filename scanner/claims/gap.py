"""Quantization-gap check: weights pressed against the walls of quantization bins.

The box-constrained quantization attack (THREATS.md section 3) moves every weight inside
the interval that rounds to a chosen code and keeps it a margin away from the bin walls
so that full-precision repair cannot leak across. Its footprint is in the rounding
residual ``r = w/s - round(w/s)``: benign weights spread r evenly over [-0.5, 0.5];
attacked ones pile up within the attacker's margin of +/-0.5.

The passive test, per tensor and per row, for int8 symmetric per-channel and for Q8_0 and
Q4_0 blocks: for bands ``b`` (distance to the nearest wall) from 0.01 to 0.25, count
residuals within ``b`` of the inner wall (towards zero) and of the outer wall separately,
and compare each count with its null: the larger of the uniform share ``b`` and the share
seen on control grids (the same grid shifted by a quarter, half and three quarters of a
step: they see the weight distribution's shape and storage lattice, but walls planted on
the true grid land inside the control bins). A
tensor is flagged only when *both* walls show an excess (the attack sides at random; a
density slope inside bins raises one wall and lowers the other) and the Chernoff bound on
the binomial tail is below ``ALPHA`` divided by the number of tests (Bonferroni over
tensors, schemes, bands and rows). Benign twins are set aside first: tensors mostly on
the grid (``|r| < 1e-3``: QAT or dequantized checkpoints) and tensors too small for a
histogram.

The active test, reported beside it: quantize with and without a uniform noise of
``NOISE`` steps and count flipped codes. Uniform residuals flip ``NOISE / 2`` of codes
(on average); residuals inside a margin smaller than the noise flip far more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.findings import Finding, Location, Region, Severity
from scanner.rulebook import define_rule, finding

QUANT_GAP = define_rule(
    "MS409",
    "quantization-gap",
    Severity.MEDIUM,
    "Weights pile up at quantization bin walls",
    checks="On full-precision tensors, the rounding residual w/s - round(w/s) for int8 "
    "symmetric per-channel, Q8_0 and Q4_0 grids: a statistically significant excess of "
    "residuals near both bin walls (any narrow band, per tensor and per row), with the "
    "fraction of codes that flip under a small noise as a second signal.",
    why="Quantization-activated backdoors (box-constrained PGD: Ma et al. 2021, Egashira "
    "et al. 2024, 'Mind the Gap' 2025) ship a benign float model whose quantized version "
    "is malicious; the constraint leaves weights pressed against the bin walls.",
    example="`encoder.layer.2.intermediate.dense.weight` (int8 per-channel): 61% of "
    "residuals within 0.08 of a wall on both sides, expected 16%; 1,536 rows; 47% of "
    "codes flip under 0.15-step noise (benign about 7.5%).",
    fix="Do not quantize this artifact; obtain the model from its original trainer, or "
    "add noise larger than the margin before quantizing (breaks the planted codes).",
    references=("docs/claims.md", "THREATS.md section 3"),
)

ALPHA = 1e-6
"""Family-wise false-alarm probability per artifact."""
MIN_ELEMENTS = 4096
"""Tensors smaller than this give noisy histograms and are not tested."""
MIN_ROW_ELEMENTS = 256
ON_GRID_TOL = 1e-3
MIN_MANTISSA_BITS = 16
ON_GRID_FRACTION = 0.5
BANDS = (0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25)
CONTROL_OFFSETS = (0.25, 0.5, 0.75)
NOISE = 0.15
SCHEMES = ("int8-per-channel", "q8_0", "q4_0")


@dataclass(frozen=True)
class GapResult:
    tensor: str
    scheme: str
    n: int
    on_grid_fraction: float
    flagged: bool
    band: float = 0.0
    inner: float = 0.0
    outer: float = 0.0
    expected: float = 0.0
    log10_p: float = 0.0
    rows: tuple[int, ...] = ()
    flip_fraction: float = 0.0
    flip_expected: float = NOISE / 2
    skipped: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _grid(w2: np.ndarray, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """(w / step, mask of elements that do not define the step) for a 2-D float array."""
    if scheme == "int8-per-channel":
        amax = np.abs(w2).max(axis=1, keepdims=True)
        s = np.where(amax > 0, amax / 127.0, 1.0)
        q = w2 / s
        return q, np.abs(q) < 126.5
    blocks = w2.reshape(-1, 32)
    if scheme == "q8_0":
        d = (np.abs(blocks).max(axis=1, keepdims=True) / 127.0).astype(np.float16)
        d = np.where(d != 0, d.astype(np.float32), 1.0)
        q = blocks / d
        return q.reshape(w2.shape), (np.abs(q) < 126.5).reshape(w2.shape)
    imax = np.abs(blocks).argmax(axis=1)
    d = (blocks[np.arange(len(blocks)), imax] / -8.0).astype(np.float16).astype(np.float32)
    d = np.where(d != 0, d, 1.0)[:, None]
    q = blocks / d
    return q.reshape(w2.shape), (np.abs(q) < 7.5).reshape(w2.shape)


def _mantissa_bits(w2: np.ndarray) -> int:
    """Significand bits the values actually use (23 for float32 data, 7 for bf16 data
    stored as float32, 10 for fp16 ...): trailing zero bits common to every element."""
    bits = np.bitwise_or.reduce(w2.view(np.uint32).reshape(-1) & np.uint32(0x7FFFFF))
    bits = int(bits)
    if bits == 0:
        return 0
    return 23 - ((bits & -bits).bit_length() - 1)


def _wall_counts(q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per row: tested count, and per band the counts near the inner and the outer wall."""
    r = q - np.rint(q)
    # Orient so that negative = towards zero for every sign of w (inner wall).
    rs = np.where(q >= 0, r, -r)
    # Only residuals within the widest band of a wall matter; compare on those alone.
    u_in = np.where(valid, rs + 0.5, 1.0).astype(np.float32)
    u_out = np.where(valid, 0.5 - rs, 1.0).astype(np.float32)
    n = valid.sum(axis=1)
    inner = np.stack([(u_in < b).sum(axis=1) for b in BANDS], axis=1)
    outer = np.stack([(u_out < b).sum(axis=1) for b in BANDS], axis=1)
    on_grid = (valid & (np.abs(r) < ON_GRID_TOL)).sum()
    return (np.repeat(n[:, None], len(BANDS), axis=1), inner, outer, np.asarray(on_grid))


def _log_tail(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Chernoff bound on log P(X >= k), X ~ Bin(n, p): -n KL(k/n || p) where k/n > p."""
    n = np.maximum(n, 1)
    q = np.clip(k / n, 1e-12, 1 - 1e-12)
    p = np.clip(p, 1e-12, 1 - 1e-12)
    kl = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return np.where(q > p, -n * kl, 0.0)


def gap_tensor(name: str, w: np.ndarray, scheme: str, n_tests: int) -> GapResult:
    """Test one float tensor against one quantization grid."""
    w2 = np.asarray(w, dtype=np.float32).reshape(w.shape[0] if w.ndim > 1 else 1, -1)
    if scheme != "int8-per-channel" and w2.shape[1] % 32:
        return GapResult(name, scheme, w.size, 0.0, False, skipped="rows not a multiple of 32")
    q, valid = _grid(w2, scheme)
    valid &= w2 != 0
    mbits = _mantissa_bits(w2)
    total = int(valid.sum())
    if mbits < MIN_MANTISSA_BITS:
        # bf16 / fp16 data: residuals live on a lattice of a few hundred points per step,
        # whose alignment with the walls is arithmetic, not intent. Not testable here.
        return GapResult(name, scheme, total, 0.0, False,
                         skipped=f"values use {mbits} significand bits")
    n, inner, outer, on_grid = _wall_counts(q, valid)
    if total < MIN_ELEMENTS:
        return GapResult(name, scheme, total, 0.0, False, skipped="too small")
    on_frac = float(on_grid) / total
    if on_frac >= ON_GRID_FRACTION:
        return GapResult(name, scheme, total, on_frac, False, skipped="on the grid")
    bands = np.asarray(BANDS)
    # Null share per band: uniform, or what control grids show, whichever is larger.
    ctrl = np.zeros(len(BANDS))
    ctrl_rows = np.zeros(inner.shape)
    for off in CONTROL_OFFSETS:
        nc, ic, oc, _ = _wall_counts(q + np.float32(off), valid)
        ctrl = np.maximum(ctrl, np.maximum(ic.sum(0), oc.sum(0)) / np.maximum(nc.sum(0), 1))
        ctrl_rows = np.maximum(ctrl_rows, np.maximum(ic, oc) / np.maximum(nc, 1))
    p0 = np.maximum(bands, ctrl)
    p0_rows = np.maximum(bands[None, :], ctrl_rows)
    threshold = math.log(ALPHA / max(n_tests, 1))
    nt, ti, to = n.sum(0), inner.sum(0), outer.sum(0)
    log_t = np.maximum(_log_tail(ti, nt, p0), _log_tail(to, nt, p0))
    log_t = np.where(nt >= MIN_ELEMENTS, log_t, 0.0)
    # Per row (the attacker may touch some rows only).
    log_r = np.maximum(_log_tail(inner, n, p0_rows), _log_tail(outer, n, p0_rows))
    log_r = np.where(n >= MIN_ROW_ELEMENTS, log_r, 0.0)
    row_hit = (log_r < threshold).any(axis=1)
    best = int(np.argmin(log_t))
    flagged = bool(log_t[best] < threshold) or bool(row_hit.any())
    if not (log_t[best] < threshold) and row_hit.any():
        best = int(np.argmin(log_r[row_hit].min(axis=0)))
    nb = max(int(nt[best]), 1)
    flip = flip_fraction(w2, scheme)
    return GapResult(
        name, scheme, total, on_frac, flagged, band=float(bands[best]),
        inner=float(ti[best] / nb), outer=float(to[best] / nb),
        expected=float(p0[best]), log10_p=float(min(log_t[best], log_r.min(initial=0.0))
                                                / math.log(10)),
        rows=tuple(int(i) for i in np.flatnonzero(row_hit)), flip_fraction=flip)


def flip_fraction(w: np.ndarray, scheme: str, noise: float = NOISE, seed: int = 0) -> float:
    """Active check: the share of codes that change when ``noise`` steps of uniform noise
    are added before rounding (uniform residuals give about ``noise / 2``)."""
    w2 = np.asarray(w, dtype=np.float32).reshape(w.shape[0] if w.ndim > 1 else 1, -1)
    if scheme != "int8-per-channel" and w2.shape[1] % 32:
        return 0.0
    q, valid = _grid(w2, scheme)
    rng = np.random.default_rng(seed)
    noisy = q + rng.uniform(-noise, noise, size=q.shape).astype(np.float32)
    flips = (np.rint(noisy) != np.rint(q)) & valid
    return float(flips.sum()) / max(int(valid.sum()), 1)


def _float_tensors(art: Artifact) -> Iterator[str]:
    for name, info in art.tensors.items():
        if info.dtype.name in ("F32", "F16", "BF16", "F64") and len(info.shape) >= 2 \
                and info.n_elements >= MIN_ELEMENTS:
            yield name


def gap_results(art: Artifact, only: Iterable[str] | None = None) -> list[GapResult]:
    """Every float tensor of ``art`` (or those named in ``only``) against every scheme."""
    wanted = None if only is None else set(only)
    names = [n for n in _float_tensors(art) if wanted is None or n in wanted]
    n_tests = 0
    for name in names:
        rows = art.tensors[name].shape[0]
        n_tests += len(SCHEMES) * len(BANDS) * (1 + rows)
    out: list[GapResult] = []
    for name in names:
        w = art.to_float(name)
        for scheme in SCHEMES:
            out.append(gap_tensor(name, w, scheme, n_tests))
    return out


def gap_findings(
    art: Artifact, artifact_label: str | None = None, only: Iterable[str] | None = None
) -> Iterable[Finding]:
    results = gap_results(art, only)
    for r in results:
        if not r.flagged:
            continue
        region = Region(axis=0, indices=r.rows[:256]) if r.rows else None
        msg = (f"{r.tensor} ({r.scheme}): {r.inner:.1%} of residuals within {r.band:g} of "
               f"the inner wall and {r.outer:.1%} of the outer, expected {r.expected:.1%} "
               f"(log10 p {r.log10_p:.1f}); {len(r.rows)} rows; {r.flip_fraction:.1%} of "
               f"codes flip under {NOISE:g}-step noise (benign about {r.flip_expected:.1%})")
        yield finding(QUANT_GAP, msg,
                      [Location(artifact=artifact_label, tensor=r.tensor, region=region)],
                      evidence={"scheme": r.scheme, "band": r.band, "inner": r.inner,
                                "outer": r.outer, "expected": r.expected,
                                "log10_p": r.log10_p, "rows": list(r.rows[:256]),
                                "rows_total": len(r.rows), "flip_fraction": r.flip_fraction,
                                "flip_expected": r.flip_expected, "elements": r.n,
                                "on_grid_fraction": r.on_grid_fraction})


def check_quantization_gap(artifact: Artifact) -> Iterable[Finding]:
    """Single-artifact check (``modelseal scan``)."""
    return list(gap_findings(artifact))
