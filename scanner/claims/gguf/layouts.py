"""ggml block layouts decoded into codes and the scales that dequantize them.

Every type whose values are ``scale * code + offset`` per group of elements (or
``scale * grid[code]`` for the non-linear IQ4 types) is decoded here, vectorized over all
blocks of a chunk: the integer code of each element, the step and offset of each group,
and the super-block scale units that the group scales are integer multiples of. The
dequantized value is computed with exactly ggml's float32 operations, so it equals
``gguf.quants.dequantize`` bit for bit.

Types whose codes index lattice codebooks (IQ1, IQ2, IQ3) are not decomposed: they are
dequantized by the ``gguf`` package and judged by their error (see ``judge.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IQ4_GRID = np.array(
    (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113), dtype=np.float32
)

LINEAR_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
GRID_TYPES = ("IQ4_NL", "IQ4_XS")
CODEBOOK_TYPES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M")
DECODED_TYPES = LINEAR_TYPES + GRID_TYPES
CHECKABLE_TYPES = DECODED_TYPES + CODEBOOK_TYPES

AFFINE_TYPES = ("Q4_1", "Q5_1", "Q2_K", "Q4_K", "Q5_K")
"""Types with a stored offset (min) per group; the others are symmetric around zero."""


@dataclass(frozen=True)
class Layout:
    """Static facts of one type."""

    name: str
    block_elements: int
    block_bytes: int
    group: int
    """Elements sharing one step (and offset)."""
    qmin: int
    qmax: int
    scale_levels: int
    """Integer range of the group scales in units of the super-block scale (0: the step
    is a float16 of its own, no sub-scale quantization)."""


LAYOUTS: dict[str, Layout] = {
    "Q8_0": Layout("Q8_0", 32, 34, 32, -128, 127, 0),
    "Q4_0": Layout("Q4_0", 32, 18, 32, -8, 7, 0),
    "Q4_1": Layout("Q4_1", 32, 20, 32, 0, 15, 0),
    "Q5_0": Layout("Q5_0", 32, 22, 32, -16, 15, 0),
    "Q5_1": Layout("Q5_1", 32, 24, 32, 0, 31, 0),
    "Q2_K": Layout("Q2_K", 256, 84, 16, 0, 3, 15),
    "Q3_K": Layout("Q3_K", 256, 110, 16, -4, 3, 32),
    "Q4_K": Layout("Q4_K", 256, 144, 32, 0, 15, 63),
    "Q5_K": Layout("Q5_K", 256, 176, 32, 0, 31, 63),
    "Q6_K": Layout("Q6_K", 256, 210, 16, -32, 31, 128),
    "IQ4_NL": Layout("IQ4_NL", 32, 18, 32, 0, 15, 0),
    "IQ4_XS": Layout("IQ4_XS", 256, 136, 32, 0, 15, 32),
}


@dataclass
class Decoded:
    """Codes and scales of ``n`` blocks, grouped ``(n * groups_per_block, group)``."""

    codes: np.ndarray
    """Integer code of each element, as the dequantization multiplies it (int8, or uint8
    where the codes are unsigned)."""
    step: np.ndarray
    """Step of each group, ``(n_groups, 1)`` float32."""
    offset: np.ndarray | None
    """Offset of each group (affine types), ``(n_groups, 1)`` float32."""
    unit: np.ndarray
    """Super-block scale unit of each group (its step is an integer multiple of it, or the
    step itself when the type has no sub-scales), ``(n_groups, 1)`` float32."""
    offset_unit: np.ndarray | None
    grid: np.ndarray | None = None
    """Code -> multiplier for the non-linear types (IQ4)."""

    def values(self) -> np.ndarray:
        """Dequantized values, ``(n_groups, group)`` float32, bit-exact with ggml."""
        out = self.grid[self.codes] if self.grid is not None else self.codes.astype(np.float32)
        # Per-group factors repeated to the elements: a flat product runs much faster
        # than one broadcast over short groups.
        group = out.shape[1]
        flat = out.reshape(-1)
        flat *= np.repeat(self.step.reshape(-1), group)
        if self.offset is not None:
            flat += np.repeat(self.offset.reshape(-1), group)
        return out


def _f16(b: np.ndarray) -> np.ndarray:
    """A float16 field of every block, ``(n,)`` float32."""
    if b.strides[-1] != 1:
        b = np.ascontiguousarray(b)
    # A column pair of a block array viewed in place: no copy of the blocks.
    return b.view(np.float16).astype(np.float32).reshape(-1)


_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
NIBBLE_PASS_WORDS = 1 << 15
"""Source words split per pass (bounds the cached gather patterns to 1 MiB per row
width)."""
_NIBBLE_PATTERNS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _nibble_pattern(rows: int, words: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``rows`` rows of ``words`` uint64: the source word of each output word (each
    row's words twice: for the low nibbles, then the high ones) and its shift."""
    cached = _NIBBLE_PATTERNS.get(words)
    if cached is None or cached[0].size < 2 * words * rows:
        per_row = np.tile(np.arange(words), 2)
        index = (np.arange(rows)[:, None] * words + per_row).reshape(-1)
        shift = np.tile(np.repeat(np.array([0, 4], dtype=np.uint64), words), rows)
        cached = _NIBBLE_PATTERNS[words] = (index, shift)
    return cached[0][: 2 * words * rows], cached[1][: 2 * words * rows]


def _nibbles(qs: np.ndarray, half: int) -> np.ndarray:
    """Split bytes ``(n, k, half)`` into ``(n, k, 2, half)`` low / high nibbles.

    Eight nibbles at a time: each row's uint64 words are gathered twice, shifted and
    masked, which keeps numpy in long flat loops instead of two short loops per row."""
    lead = qs.shape[:-1]
    width = half // 8  # every ggml layout packs 16, 32 or 64 bytes of nibbles
    words = np.ascontiguousarray(qs).view(np.uint64).reshape(-1)
    rows = words.size // width
    out = np.empty(2 * words.size, dtype=np.uint64)
    step = max(1, NIBBLE_PASS_WORDS // width)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        index, shift = _nibble_pattern(r1 - r0, width)
        part = out[2 * width * r0 : 2 * width * r1]
        np.take(words[width * r0 : width * r1], index, out=part)
        part >>= shift
        part &= _LOW_NIBBLES
    return out.view(np.uint8).reshape(*lead, 2, half)


def _col(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 1)


def decode(blocks: np.ndarray, type_name: str) -> Decoded:
    """Decode raw blocks ``(n, block_bytes)`` uint8 of a linear or IQ4 type."""
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, LAYOUTS[type_name].block_bytes)
    return _DECODERS[type_name](b)


def _q8_0(b: np.ndarray) -> Decoded:
    d = _col(_f16(b[:, 0:2]))
    codes = np.ascontiguousarray(b[:, 2:34]).view(np.int8)
    return Decoded(codes, d, None, d, None)


def _q4_0(b: np.ndarray) -> Decoded:
    d = _col(_f16(b[:, 0:2]))
    q = _nibbles(b[:, 2:18].reshape(-1, 1, 16), 16).reshape(-1, 32).view(np.int8)
    q -= 8
    return Decoded(q, d, None, d, None)


def _q4_1(b: np.ndarray) -> Decoded:
    d = _col(_f16(b[:, 0:2]))
    m = _col(_f16(b[:, 2:4]))
    q = _nibbles(b[:, 4:20].reshape(-1, 1, 16), 16).reshape(-1, 32)
    return Decoded(q, d, m, d, m)


def _high_bits32(qh: np.ndarray) -> np.ndarray:
    """Bit ``j`` of a little-endian uint32 per block, as ``(n, 32)`` 0/1."""
    n = qh.shape[0]
    return np.unpackbits(np.ascontiguousarray(qh).reshape(-1), bitorder="little").reshape(n, 32)


def _q5_0(b: np.ndarray) -> Decoded:
    d = _col(_f16(b[:, 0:2]))
    low = _nibbles(b[:, 6:22].reshape(-1, 1, 16), 16).reshape(-1, 32)
    q = (low | (_high_bits32(b[:, 2:6]) << 4)).view(np.int8)
    q -= 16
    return Decoded(q, d, None, d, None)


def _q5_1(b: np.ndarray) -> Decoded:
    d = _col(_f16(b[:, 0:2]))
    m = _col(_f16(b[:, 2:4]))
    low = _nibbles(b[:, 8:24].reshape(-1, 1, 16), 16).reshape(-1, 32)
    q = low | (_high_bits32(b[:, 4:8]) << 4)
    return Decoded(q, d, m, d, m)


def _two_bit(qs: np.ndarray) -> np.ndarray:
    """The 64-byte 2-bit arrays of Q2_K / Q3_K: element ``128 h + 32 j + l`` is bits
    ``2j..2j+1`` of byte ``32 h + l``; returns ``(n, 256)``."""
    n = qs.shape[0]
    src = qs.reshape(n, 2, 1, 32)
    out = np.empty((n, 2, 4, 32), dtype=np.uint8)
    for j in range(4):
        np.bitwise_and(np.right_shift(src[:, :, 0], 2 * j), 3, out=out[:, :, j])
    return out.reshape(n, 256)


def _q2_k(b: np.ndarray) -> Decoded:
    n = b.shape[0]
    sc = b[:, 0:16]
    d = _f16(b[:, 80:82])
    dmin = _f16(b[:, 82:84])
    step = (d[:, None] * (sc & 0x0F).astype(np.float32)).reshape(-1, 1)
    offset = -(dmin[:, None] * (sc >> 4).astype(np.float32)).reshape(-1, 1)
    q = _two_bit(b[:, 16:80]).reshape(n * 16, 16)
    return Decoded(q, step, offset, _col(np.repeat(d, 16)), _col(np.repeat(dmin, 16)))


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)
    high = np.empty((s.shape[0], 16), dtype=np.uint8)
    for j in range(4):
        high[:, 4 * j : 4 * j + 4] = (s[:, 8:12] >> (2 * j)) & 3
    return (low | (high << 4)).astype(np.int16) - 32


def _q3_k(b: np.ndarray) -> Decoded:
    n = b.shape[0]
    d = _f16(b[:, 108:110])
    sc = _q3_k_scales(b[:, 96:108]).astype(np.float32)
    step = (d[:, None] * sc).reshape(-1, 1)
    low = _two_bit(b[:, 32:96]).view(np.int8)
    # hmask bit j of byte m marks element 32 j + m; a clear bit subtracts 4.
    hm = np.unpackbits(b[:, 0:32].reshape(n, 32, 1), axis=2, bitorder="little")
    high = hm.transpose(0, 2, 1).reshape(n, 256).view(np.int8)
    q = (low - 4 + 4 * high).reshape(n * 16, 16)
    return Decoded(q, step, None, _col(np.repeat(d, 16)), None)


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """6-bit scales and mins of Q4_K / Q5_K (``get_scale_min_k4``)."""
    sc = np.empty((s.shape[0], 8), dtype=np.uint8)
    m = np.empty((s.shape[0], 8), dtype=np.uint8)
    sc[:, 0:4] = s[:, 0:4] & 63
    m[:, 0:4] = s[:, 4:8] & 63
    sc[:, 4:8] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, m


def _q45_k(b: np.ndarray, five: bool) -> Decoded:
    n = b.shape[0]
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    sc, m = _k_scale_min(b[:, 4:16])
    step = (d[:, None] * sc.astype(np.float32)).reshape(-1, 1)
    offset = -(dmin[:, None] * m.astype(np.float32)).reshape(-1, 1)
    qs = b[:, 48:176] if five else b[:, 16:144]
    # Bytes 32 j .. 32 j + 31 hold sub-block 2 j (low nibbles) and 2 j + 1 (high).
    q = _nibbles(qs.reshape(n, 4, 32), 32).reshape(n, 8, 32)
    if five:
        hb = np.unpackbits(b[:, 16:48].reshape(n, 32, 1), axis=2, bitorder="little")
        q = q | (hb.transpose(0, 2, 1) << 4)
    q = q.reshape(n * 8, 32)
    return Decoded(q, step, offset, _col(np.repeat(d, 8)), _col(np.repeat(dmin, 8)))


def _q6_k(b: np.ndarray) -> Decoded:
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 64)
    qh = b[:, 128:192].reshape(n, 2, 32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    # Per half of 128: low nibbles of bytes 0-31 / 32-63 are elements 0-31 / 32-63, high
    # nibbles elements 64-95 / 96-127; bits 2j..2j+1 of qh[l] top up element 32 j + l.
    low = _nibbles(ql, 64).reshape(n, 2, 4, 32)
    high = np.empty((n, 2, 4, 32), dtype=np.uint8)
    for j in range(4):
        np.bitwise_and(np.right_shift(qh, 2 * j), 3, out=high[:, :, j])
    q = (low | (high << 4)).view(np.int8)
    q -= 32
    step = (d[:, None] * sc).reshape(-1, 1)
    return Decoded(q.reshape(n * 16, 16), step, None, _col(np.repeat(d, 16)), None)


def _iq4_nl(b: np.ndarray) -> Decoded:
    d = _col(_f16(b[:, 0:2]))
    q = _nibbles(b[:, 2:18].reshape(-1, 1, 16), 16).reshape(-1, 32)
    return Decoded(q, d, None, d, None, IQ4_GRID)


def _iq4_xs(b: np.ndarray) -> Decoded:
    n = b.shape[0]
    d = _f16(b[:, 0:2])
    sh = np.ascontiguousarray(b[:, 2:4]).view(np.uint16).reshape(n)
    sl = b[:, 4:8]
    ls = np.empty((n, 8), dtype=np.int16)
    for ib in range(8):
        low = (sl[:, ib // 2] >> (4 * (ib % 2))) & 0x0F
        ls[:, ib] = low | (((sh >> (2 * ib)) & 3).astype(np.uint8) << 4)
    step = (d[:, None] * (ls - 32).astype(np.float32)).reshape(-1, 1)
    q = _nibbles(b[:, 8:136].reshape(n, 8, 16), 16).reshape(n * 8, 32)
    return Decoded(q, step, None, _col(np.repeat(d, 8)), None, IQ4_GRID)


_DECODERS = {
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": lambda b: _q45_k(b, False),
    "Q5_K": lambda b: _q45_k(b, True),
    "Q6_K": _q6_k,
    "IQ4_NL": _iq4_nl,
    "IQ4_XS": _iq4_xs,
}


def dequantize(blocks: np.ndarray, type_name: str) -> np.ndarray:
    """Values of raw blocks ``(n, block_bytes)`` as ``(n, block_elements)`` float32."""
    layout_bytes = _block_bytes(type_name)
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, layout_bytes)
    if type_name in _DECODERS:
        per = LAYOUTS[type_name].block_elements
        return decode(b, type_name).values().reshape(-1, per)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    out = gguf_dequantize(b, GGMLQuantizationType[type_name])
    return np.asarray(out, dtype=np.float32).reshape(b.shape[0], -1)


def _block_bytes(type_name: str) -> int:
    if type_name in LAYOUTS:
        return LAYOUTS[type_name].block_bytes
    from scanner.dtypes import DTYPES

    return DTYPES[type_name].block_bytes
