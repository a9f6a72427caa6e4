"""Bit-level footprints: payloads in low mantissa bytes, exponent / sign bit flips.

Both are read from the XOR of the raw storage words, never from magnitudes:
- EvilModel-style steganography rewrites the low 2-3 bytes of many float32 weights with
  payload bytes. Every changed word keeps its sign and exponent, the changed bits fill
  the low bytes like random data (the top payload bit differs in about half of the
  words), and values move by at most a fraction of their own size. A fine-tune moves
  values by amounts unrelated to their size, so small weights change exponent or sign;
  a payload never does.
- Bit-flip attacks (Rowhammer-style, or a patched file) toggle one or two sign or
  exponent bits in a handful of words: a huge relative change on very few elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanner.analysis.tensors import FLOAT_DTYPES, TensorPair

MIN_PAYLOAD_WORDS = 64
"""Fewer changed words than this are too few to call a payload (and may be flips)."""
MAX_FLIPPED_WORDS = 64
"""A bit-flip finding covers at most this many words (and at most 1% of the tensor)."""


@dataclass(frozen=True)
class BitFinding:
    kind: str
    """``low-byte payload`` or ``exponent/sign bit flips``."""
    n_words: int
    payload_bits: int
    """Low bits that carry the change (payload), or 0."""
    indices: tuple[int, ...]
    """Flat indices of the changed words (first ones only for payloads)."""
    evidence: dict[str, object]


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    count = np.zeros(x.shape, dtype=np.uint8)
    while np.any(x):
        count += (x & np.uint64(1)).astype(np.uint8)
        x = x >> np.uint64(1)
    return count


def analyze_bits(pair: TensorPair) -> BitFinding | None:
    """A bit-level footprint in a changed float tensor, or None."""
    if pair.dtype not in FLOAT_DTYPES:
        return None
    mant, _exp = FLOAT_DTYPES[pair.dtype]
    width = pair.trusted_bits.dtype.itemsize * 8
    a = pair.trusted_bits.reshape(-1)
    b = pair.deployed_bits.reshape(-1)
    changed = np.flatnonzero(a != b)
    n = changed.size
    if n == 0:
        return None
    xor = (a[changed] ^ b[changed]).astype(np.uint64)
    high = np.uint64(((1 << width) - 1) ^ ((1 << mant) - 1))  # sign + exponent
    touches_high = (xor & high) != 0
    total = a.size
    if n <= min(MAX_FLIPPED_WORDS, max(4, total // 100)) and np.all(touches_high):
        pop = _popcount(xor)
        if np.all(pop <= 2):
            before = pair.trusted.reshape(-1)[changed].astype(np.float64)
            after = pair.deployed.reshape(-1)[changed].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.abs(after - before) / np.maximum(np.abs(before), 1e-30)
            return BitFinding(
                "exponent/sign bit flips",
                int(n),
                0,
                tuple(int(i) for i in changed[:64]),
                {
                    "words": int(n),
                    "bits_flipped": [int(p) for p in pop[:16]],
                    "relative_change": [float(f"{r:.4g}") for r in rel[:16]],
                    "before": [float(f"{v:.6g}") for v in before[:16]],
                    "after": [float(f"{v:.6g}") for v in after[:16]],
                },
            )
    if n < MIN_PAYLOAD_WORDS or np.any(touches_high):
        return None
    # Highest changed bit across words = payload width; random payload bytes flip the
    # top payload bit in about half the words, a small numeric nudge almost never.
    top = int(np.max(np.floor(np.log2(xor.astype(np.float64)))))
    bits = top + 1
    if bits < 8:
        return None
    top_rate = float(np.mean((xor >> np.uint64(top)) & np.uint64(1)))
    next_rate = float(np.mean((xor >> np.uint64(top - 1)) & np.uint64(1)))
    if min(top_rate, next_rate) < 0.25:
        return None
    return BitFinding(
        "low-byte payload",
        int(n),
        bits,
        tuple(int(i) for i in changed[:64]),
        {
            "words": int(n),
            "fraction_of_tensor": round(n / total, 6),
            "payload_bits_per_word": bits,
            "payload_bytes_estimate": int(n * bits // 8),
            "top_bit_rate": round(top_rate, 3),
            "sign_or_exponent_changes": 0,
        },
    )
