"""Round-to-nearest encoders for ggml block types, in numpy.

``gguf.quants`` quantizes the 32-element types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) exactly as
llama.cpp's reference does; it has no K-quant quantizer. The K-quant encoders here write
valid blocks with plain round-to-nearest codes under simple scales (no scale search), for
tests and red-team fixtures.
"""

from __future__ import annotations

import numpy as np

from scanner.claims.gguf.layouts import LAYOUTS


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
    from gguf import quants

    # All rows in one call: ``quants.quantize`` splits them into groups of 16 rows, whose
    # per-call overhead dominates on narrow rows. Blocks are independent, so the bytes
    # are the same.
    x = np.ascontiguousarray(rows, dtype=np.float32)
    block = LAYOUTS[type_name].block_elements
    codes = getattr(quants, type_name).quantize_blocks(x.reshape(-1, block))
    return codes.reshape(x.shape[0], -1)


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
