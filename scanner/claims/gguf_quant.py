"""``gguf`` and ``requantize``: ggml block formats checked against trusted float weights.

Two re-derivations:

* exact, for round-to-nearest types that the ``gguf`` package can quantize
  (``gguf.quants.quantize``: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): quantize the trusted rows
  and compare the blocks byte for byte;
* bounded, for the K-quants (their reference quantizers search scales and have no Python
  port) and for claims of a search algorithm: every element's code must be within one
  step of the nearest code under the block's own stored scales, and the dequantized error
  must stay within the scheme's bound (twice the super-block's range divided by the
  number of code levels).

Codes are read without per-type bit unpacking by *probing*: dequantize the block with all
code bits zero and with every code set to 1. Dequantization is affine in the code, so
those give each element's offset and step, and ``(value - offset) / step`` is its code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scanner.artifact import Artifact, TensorInfo
from scanner.claims.base import (
    MAX_REPORTED,
    ClaimOutcome,
    CodeStats,
    TensorVerdict,
    Violation,
    sorted_rows,
)
from scanner.claims.grammar import Claim
from scanner.diff.compare import _grid

# type -> (code byte regions as (start, stop, byte for "every code = 1"), max raw code)
PROBE_LAYOUT: dict[str, tuple[tuple[tuple[int, int, int], ...], int]] = {
    "Q8_0": (((2, 34, 0x01),), 255),
    "Q4_0": (((2, 18, 0x11),), 15),
    "Q4_1": (((4, 20, 0x11),), 15),
    "Q5_0": (((2, 6, 0x00), (6, 22, 0x11)), 31),
    "Q5_1": (((4, 8, 0x00), (8, 24, 0x11)), 31),
    "Q2_K": (((16, 80, 0x55),), 3),
    "Q3_K": (((0, 32, 0x00), (32, 96, 0x55)), 7),
    "Q4_K": (((16, 144, 0x11),), 15),
    "Q5_K": (((16, 48, 0x00), (48, 176, 0x11)), 31),
    "Q6_K": (((0, 128, 0x11), (128, 192, 0x00)), 63),
}
REFERENCE_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
"""Types with a bit-exact Python quantizer in ``gguf.quants``."""

FLOAT_SOURCES = ("F32", "F16", "BF16", "F64")
ROWS_PER_CHUNK_ELEMENTS = 1 << 20


def _qtype(name: str) -> Any:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name]


def dequantize_blocks(blocks: np.ndarray, type_name: str) -> np.ndarray:
    from gguf.quants import dequantize

    return np.asarray(dequantize(blocks, _qtype(type_name)), dtype=np.float32)


def probe_codes(blocks: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offset, step, code) of every element of ``blocks`` (rows of raw block bytes)."""
    regions, _ = PROBE_LAYOUT[type_name]
    zero = blocks.copy()
    one = blocks.copy()
    for start, stop, pattern in regions:
        zero[..., start:stop] = 0
        one[..., start:stop] = pattern
    if type_name == "Q8_0":
        # int8 codes: raw 0 is the value 0; map codes to 0..255 by adding 128 below.
        pass
    y = dequantize_blocks(blocks, type_name)
    y0 = dequantize_blocks(zero, type_name)
    step = dequantize_blocks(one, type_name) - y0
    with np.errstate(divide="ignore", invalid="ignore"):
        code = np.rint((y - y0) / step)
    return y0, step, code


def quantize_rows(rows: np.ndarray, type_name: str) -> np.ndarray:
    """Reference quantization of float rows to ggml blocks (uint8 rows)."""
    if type_name == "Q6_K":
        return quantize_q6_k(rows)
    if type_name in ("Q4_K", "Q5_K"):
        return quantize_q45_k(rows, type_name)
    if type_name == "Q2_K":
        return quantize_q2_k(rows)
    if type_name == "Q3_K":
        return quantize_q3_k(rows)
    from gguf.quants import quantize

    return np.asarray(quantize(np.ascontiguousarray(rows, dtype=np.float32), _qtype(type_name)))


def quantize_q6_k(rows: np.ndarray) -> np.ndarray:
    """A plain round-to-nearest Q6_K encoder (no scale search): 16 sub-blocks of 16 with
    int8 sub-scales under an fp16 super-scale. ``gguf`` has no Python Q6_K quantizer;
    this one writes valid blocks that llama.cpp reads, for tests and red-team fixtures."""
    x = np.asarray(rows, dtype=np.float32).reshape(-1, 16, 16)
    nb = x.shape[0]
    amax = np.abs(x).max(axis=2)
    sub = amax / 31.0
    d = sub.max(axis=1) / 127.0
    d16 = d.astype(np.float16)
    d32 = d16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32[:, None] > 0, np.rint(sub / d32[:, None]), 0).clip(-128, 127)
        step = (d32[:, None] * sc)[:, :, None]
        q = np.where(step > 0, np.rint(x / step), 0).clip(-32, 31).astype(np.int16) + 32
    q = q.reshape(nb, 2, 128).astype(np.uint8)
    ql = (q[:, :, :64] & 0x0F) | ((q[:, :, 64:] & 0x0F) << 4)
    hi = (q >> 4).reshape(nb, 2, 4, 32)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    out = np.concatenate(
        [
            ql.reshape(nb, 128),
            qh.reshape(nb, 64),
            sc.astype(np.int8).view(np.uint8),
            d16.view(np.uint8).reshape(nb, 2),
        ],
        axis=1,
    )
    return out.reshape(rows.shape[0], -1)


def _pack_scale_min(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The 12-byte 6-bit scale/min table of Q4_K and Q5_K (inverse of
    ``gguf.quants.Q4_K.get_scale_min``)."""
    sc = sc.astype(np.uint8)
    m = m.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 0x3F) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    return out


def quantize_q45_k(rows: np.ndarray, type_name: str) -> np.ndarray:
    """A plain round-to-nearest Q4_K / Q5_K encoder (no scale search): 8 sub-blocks of 32
    with 6-bit scales and mins under fp16 super-scales, codes ``round((x + min) / step)``.
    ``gguf`` has no Python K-quant quantizer and llama.cpp's reference searches scales;
    this one writes valid blocks, for tests and red-team fixtures."""
    levels = 15 if type_name == "Q4_K" else 31
    x = np.asarray(rows, dtype=np.float32).reshape(-1, 8, 32)
    nb = x.shape[0]
    lo = np.minimum(x.min(axis=2), 0.0)
    hi = x.max(axis=2)
    scale = (hi - lo) / levels
    mins = -lo
    d16 = (scale.max(axis=1) / 63.0).astype(np.float16)
    dm16 = (mins.max(axis=1) / 63.0).astype(np.float16)
    d = d16.astype(np.float32)[:, None]
    dm = dm16.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d > 0, np.rint(scale / d), 0).clip(0, 63)
        m = np.where(dm > 0, np.rint(mins / dm), 0).clip(0, 63)
        step = (d * sc)[:, :, None]
        off = (dm * m)[:, :, None]
        q = np.where(step > 0, np.rint((x + off) / step), 0).clip(0, levels).astype(np.uint8)
    # Nibbles: sub-blocks 2j and 2j+1 share 32 bytes (low, high nibble).
    pairs = q.reshape(nb, 4, 2, 32)
    qs = ((pairs[:, :, 0] & 0x0F) | ((pairs[:, :, 1] & 0x0F) << 4)).reshape(nb, 128)
    parts = [
        d16.view(np.uint8).reshape(nb, 2),
        dm16.view(np.uint8).reshape(nb, 2),
        _pack_scale_min(sc, m),
    ]
    if type_name == "Q5_K":
        # Fifth bit of sub-block i is bit i of byte e of qh.
        bits = (q >> 4) & 1
        qh = np.zeros((nb, 32), dtype=np.uint8)
        for i in range(8):
            qh |= (bits[:, i] << i).astype(np.uint8)
        parts.append(qh)
    parts.append(qs)
    return np.concatenate(parts, axis=1).reshape(rows.shape[0], -1)


def _pack_2bit(q: np.ndarray) -> np.ndarray:
    """The 64-byte 2-bit code array of Q2_K and Q3_K: element ``128 h + 32 j + l`` is
    bits ``2j..2j+1`` of byte ``32 h + l``."""
    nb = q.shape[0]
    g = (q.reshape(nb, 2, 4, 32) & 3).astype(np.uint8)
    qs = g[:, :, 0] | (g[:, :, 1] << 2) | (g[:, :, 2] << 4) | (g[:, :, 3] << 6)
    return qs.reshape(nb, 64)


def quantize_q2_k(rows: np.ndarray) -> np.ndarray:
    """A plain round-to-nearest Q2_K encoder (no scale search): 16 sub-blocks of 16 with
    4-bit scales and 4-bit mins (low and high nibble of ``scales[16]``) under fp16
    ``d`` and ``dmin``, codes ``round((x + min) / step)`` in 0..3. ``gguf`` has no Python
    Q2_K quantizer; this one writes valid blocks, for tests and red-team fixtures."""
    x = np.asarray(rows, dtype=np.float32).reshape(-1, 16, 16)
    nb = x.shape[0]
    lo = np.minimum(x.min(axis=2), 0.0)
    hi = x.max(axis=2)
    scale = (hi - lo) / 3.0
    mins = -lo
    d16 = (scale.max(axis=1) / 15.0).astype(np.float16)
    dm16 = (mins.max(axis=1) / 15.0).astype(np.float16)
    d = d16.astype(np.float32)[:, None]
    dm = dm16.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d > 0, np.rint(scale / d), 0).clip(0, 15).astype(np.uint8)
        m = np.where(dm > 0, np.rint(mins / dm), 0).clip(0, 15).astype(np.uint8)
        step = (d * sc)[:, :, None]
        off = (dm * m)[:, :, None]
        q = np.where(step > 0, np.rint((x + off) / step), 0).clip(0, 3).astype(np.uint8)
    out = np.concatenate(
        [
            sc | (m << 4),
            _pack_2bit(q),
            d16.view(np.uint8).reshape(nb, 2),
            dm16.view(np.uint8).reshape(nb, 2),
        ],
        axis=1,
    )
    return out.reshape(rows.shape[0], -1)


def _pack_q3_scales(s: np.ndarray) -> np.ndarray:
    """The 12-byte 6-bit scale table of Q3_K (``s`` = scale + 32, 0..63): scale ``i`` has
    its low nibble in byte ``i % 8`` (low nibble for i < 8, high for i >= 8) and its top
    two bits at bits ``2 (i // 4)`` of byte ``8 + i % 4``."""
    s = s.astype(np.uint8)
    out = np.empty((s.shape[0], 12), dtype=np.uint8)
    out[:, 0:8] = (s[:, 0:8] & 0x0F) | ((s[:, 8:16] & 0x0F) << 4)
    h = (s >> 4) & 3
    out[:, 8:12] = h[:, 0:4] | (h[:, 4:8] << 2) | (h[:, 8:12] << 4) | (h[:, 12:16] << 6)
    return out


def quantize_q3_k(rows: np.ndarray) -> np.ndarray:
    """A plain round-to-nearest Q3_K encoder (no scale search): 16 symmetric sub-blocks
    of 16 with signed 6-bit scales under an fp16 ``d``, codes ``round(x / step)`` in -4..3
    (the sub-block's largest-magnitude element maps to -4, as in llama.cpp's
    ``make_q3_quants``). Code ``q + 4`` is stored as its low two bits in ``qs`` and its
    third bit in ``hmask``. ``gguf`` has no Python Q3_K quantizer; this one writes valid
    blocks, for tests and red-team fixtures."""
    x = np.asarray(rows, dtype=np.float32).reshape(-1, 16, 16)
    nb = x.shape[0]
    at = np.abs(x).argmax(axis=2)[:, :, None]
    sub = np.take_along_axis(x, at, axis=2)[:, :, 0] / -4.0
    d16 = (np.abs(sub).max(axis=1) / 31.0).astype(np.float16)
    d = d16.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d > 0, np.rint(sub / d), 0).clip(-32, 31)
        step = (d * sc)[:, :, None]
        q = np.where(step != 0, np.rint(x / step), 0).clip(-4, 3).astype(np.int16) + 4
    q = q.reshape(nb, 256).astype(np.uint8)
    bits = ((q >> 2) & 1).reshape(nb, 8, 32)
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for j in range(8):
        hmask |= (bits[:, j] << j).astype(np.uint8)
    out = np.concatenate(
        [
            hmask,
            _pack_2bit(q),
            _pack_q3_scales(sc.astype(np.int16) + 32),
            d16.view(np.uint8).reshape(nb, 2),
        ],
        axis=1,
    )
    return out.reshape(rows.shape[0], -1)


def _rows_float(art: Artifact, info: TensorInfo) -> Any:
    """Yield (first_row, float32 rows (n, per_row)) of any tensor, dequantizing blocks."""
    from scanner.diff.compare import iter_rows

    for r0, chunk in iter_rows(art, info, native=False):
        yield r0, np.asarray(chunk, dtype=np.float32).reshape(chunk.shape[0], -1)


def _origin(name: str, trusted: Artifact, deployed: Artifact, used: set[str]) -> str | None:
    info = deployed.tensors[name]
    if name in trusted.tensors and trusted.tensors[name].shape == info.shape:
        return name
    mapped = _hf_name(name, deployed, trusted)
    if mapped is not None:
        return mapped
    same = [
        n
        for n, i in trusted.tensors.items()
        if i.shape == info.shape and n not in deployed.tensors and n not in used
    ]
    return same[0] if len(same) == 1 else None


def _hf_name(name: str, deployed: Artifact, trusted: Artifact) -> str | None:
    """Map a llama.cpp tensor name (``blk.0.attn_q.weight``) back to a trusted name
    through the ``gguf`` package's tensor-name tables."""
    try:
        import gguf

        meta = deployed.metadata.get("gguf", {})
        arch_name = meta.get("general.architecture")
        arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
        n_blocks = int(meta.get(f"{arch_name}.block_count", 0))
        tmap = gguf.get_tensor_name_map(arch, n_blocks)
    except (StopIteration, ImportError, AttributeError, ValueError, TypeError, KeyError):
        return None
    want = deployed.tensors[name].shape
    for cand in trusted.tensors:
        got = tmap.get_name(cand, try_suffixes=(".weight", ".bias"))
        if got == name and trusted.tensors[cand].shape == want:
            return cand
    return None


def check_gguf(trusted: Artifact, deployed: Artifact, claim: Claim) -> ClaimOutcome:
    """Check every deployed tensor of the claimed ggml type against its trusted origin."""
    want = (claim.param("type") or "").upper()
    requant = claim.kind == "requantize"
    strict = claim.param("algorithm", "rtn") == "rtn" and want in REFERENCE_TYPES
    verdicts: list[TensorVerdict] = []
    notes: list[str] = []
    used: set[str] = set()
    targets = [n for n, i in deployed.tensors.items() if i.dtype.name == want]
    others = sorted(
        {
            i.dtype.name
            for i in deployed.tensors.values()
            if i.dtype.is_block_quantized and i.dtype.name != want
        }
    )
    if others:
        notes.append(
            f"deployed also holds {', '.join(others)} tensors (mixed quantization); "
            "they are not covered by this claim"
        )
    if want not in PROBE_LAYOUT:
        notes.append(f"{want} cannot be re-derived")
        return ClaimOutcome(str(claim), (), tuple(notes), applicable=False)
    for name in targets:
        origin = _origin(name, trusted, deployed, used)
        if origin is None:
            notes.append(f"{name}: no trusted tensor matches by name or shape")
            continue
        src = trusted.tensors[origin]
        if not requant and src.dtype.name not in FLOAT_SOURCES:
            notes.append(
                f"{origin}: trusted tensor is {src.dtype.name}, not float; "
                "claim requantize for a quantized source"
            )
            continue
        used.add(origin)
        verdicts.append(check_tensor(trusted, origin, deployed, name, want, strict))
    return ClaimOutcome(
        str(claim),
        tuple(verdicts),
        tuple(notes),
        evidence={"type": want, "reference_quantizer": strict, "tensors": len(targets)},
        applicable=bool(targets),
    )


def check_tensor(
    trusted: Artifact, origin: str, deployed: Artifact, name: str, type_name: str, strict: bool
) -> TensorVerdict:
    info = deployed.tensors[name]
    src = trusted.tensors[origin]
    dt = info.dtype
    _, _, _rest = _grid(info.shape)
    d0 = info.shape[0] if info.shape else 1
    per_row = info.n_elements // max(d0, 1)
    if per_row % dt.block_elements:
        return TensorVerdict(
            origin,
            (name,),
            False,
            "quantization",
            f"{name}: rows of {per_row} do not fill {type_name} blocks",
            problem="layout",
        )
    row_bytes = dt.nbytes(per_row)
    raw = np.frombuffer(deployed.raw(name), dtype=np.uint8).reshape(d0, row_bytes)
    n_blocks_row = per_row // dt.block_elements
    stats = CodeStats()
    bad_blocks = 0
    samples: list[Violation] = []
    rows_bad: set[int] = set()
    rmax = PROBE_LAYOUT[type_name][1]
    max_ratio = 0.0
    for r0, w in _rows_float(trusted, src):
        n = w.shape[0]
        got = raw[r0 : r0 + n]
        if strict:
            expect = quantize_rows(w, type_name).reshape(n, row_bytes)
            eb = expect.reshape(n, n_blocks_row, dt.block_bytes)
            gb = got.reshape(n, n_blocks_row, dt.block_bytes)
            block_bad = (eb != gb).any(axis=2)
            stats.n += w.size
            if block_bad.any():
                bad_blocks += int(block_bad.sum())
                ye = dequantize_blocks(eb[block_bad], type_name)
                yg = dequantize_blocks(gb[block_bad], type_name)
                diff = ye != yg
                stats.n_mismatch += int(diff.sum())
                br, bc = np.nonzero(block_bad)
                rows_bad.update(int(r0 + r) for r in br)
                for k, (r, c) in enumerate(zip(br, bc, strict=True)):
                    for e in np.flatnonzero(diff[k]):
                        if len(samples) >= MAX_REPORTED:
                            break
                        col = int(c) * dt.block_elements + int(e)
                        samples.append(
                            Violation(
                                _unflat(r0 + int(r), col, info.shape),
                                float(ye[k, e]),
                                float(yg[k, e]),
                                float(w[r, col]),
                            )
                        )
            continue
        blocks = got.reshape(-1, dt.block_bytes)
        wb = w.reshape(-1, dt.block_elements)
        y0, step, code = probe_codes(blocks, type_name)
        with np.errstate(divide="ignore", invalid="ignore"):
            near = np.rint((wb - y0) / step)
        lo, hi = (-128, 127) if type_name == "Q8_0" else (0, rmax)
        near = np.clip(near, lo, hi)
        live = step != 0
        d = np.where(live, np.abs(code - near), 0)
        y = y0 + code * step
        err = np.abs(wb - np.where(live, y, y0))
        rng = wb.max(axis=1, keepdims=True) - wb.min(axis=1, keepdims=True)
        bound = 2.0 * rng / max(rmax, 1) + 1e-30
        ratio = err / bound
        max_ratio = max(max_ratio, float(np.max(ratio, initial=0.0)))
        over = (d > 1) | (ratio > 1)
        stats.n += w.size
        stats.n_mismatch += int((d > 0).sum())
        stats.n_beyond_one += int((d > 1).sum())
        if over.any():
            idx = np.flatnonzero(over.reshape(-1))
            for p in idx:
                r, col = divmod(int(p), per_row)
                rows_bad.add(r0 + r)
                if len(samples) < MAX_REPORTED:
                    samples.append(
                        Violation(
                            _unflat(r0 + r, col, info.shape),
                            float(near.reshape(-1)[p]),
                            float(code.reshape(-1)[p]),
                            float(w.reshape(-1)[p]),
                        )
                    )
            bad_blocks += int(over.any(axis=1).sum())
    st: dict[str, Any] = {
        **stats.to_dict(),
        "type": type_name,
        "blocks_bad": bad_blocks,
        "check": "reference-bytes" if strict else "within-one-step",
    }
    if not strict:
        st["max_error_over_bound"] = round(max_ratio, 4)
    if samples or bad_blocks:
        what = (
            "blocks differ from the reference quantizer"
            if strict
            else "blocks hold codes beyond one step or beyond the error bound"
        )
        return TensorVerdict(
            origin,
            (name,),
            False,
            "quantization",
            f"{name}: {bad_blocks:,} {type_name} {what} ({len(rows_bad)} rows)",
            stats=st,
            violations=tuple(samples),
            rows=sorted_rows(rows_bad),
            problem="codes",
        )
    msg = (
        f"{name}: {stats.n:,} elements re-quantized byte-exact as {type_name}"
        if strict
        else f"{name}: {type_name} codes within one step "
        f"({st['non_nearest_fraction']:.2%} non-nearest)"
    )
    return TensorVerdict(origin, (name,), True, "quantization", msg, stats=st)


def _unflat(row: int, col: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) <= 1:
        return (row * (shape[0] if shape else 1) + col,) if len(shape) == 1 else ()
    inner = shape[1:]
    return (row, *(int(i) for i in np.unravel_index(col, inner)))
