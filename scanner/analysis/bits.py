"""Bit-level footprints: payloads in low mantissa bits, exponent / sign bit flips.

Both are read from the XOR of the raw storage words, never from magnitudes, and judged
per changed word and per region, so other changes in the same tensor (a sign flip, an
edited row, a light fine-tune elsewhere) neither hide a payload nor make one up:

- EvilModel-style steganography *masks* the low ``k`` bits of many words with payload
  bits. Inside the payload region bits ``0..k-1`` of the XOR are set in about half of the
  words (the old low bits are noise) and bit ``k`` never is: masking has no carry. Any
  numeric change ``w + d`` (fine-tune, rounding, noise) flips bit ``j`` whenever it crosses
  a multiple of ``2^j`` ulps, so it flips bit ``k`` in at least about half as many words as
  bit ``k-1``; a drop from ~50% at bit ``k-1`` to ~0% at bit ``k`` is the mask's mark.
  Regions are blocks of ``BLOCK`` consecutive words (memory order); adjacent payload-like
  blocks are merged into runs, and a run is reported when a binomial bound rejects the
  numeric null (carry rate at least ``CARRY_FLOOR`` times the top-bit rate) at ``ALPHA``
  over all blocks tested. Truncating casts (low bits set to zero) also mask without
  carry; they are told apart by the deployed low bits, all zero after a truncation.
- Bit-flip attacks (Rowhammer-style, or a patched file) toggle one or two sign or
  exponent bits in a handful of words: a huge relative change on very few elements.

Scope: float32 (payload widths 8-23 bits) and fp16 (8-10 bits); bf16 has 7 mantissa
bits, so an 8-bit payload there rewrites exponent bits and reads as a numeric change.

Power: a payload region of about 110 words or more (220 bytes at 2 bytes per word) is
found in a tensor of a few million words; smaller ones fall under the multiple-test
bound. Limit: under a fine-tune whose per-word change is larger than the payload width,
the payload bits are indistinguishable from the fine-tune's own low-bit noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scanner.analysis.tensors import FLOAT_DTYPES, TensorPair

MIN_PAYLOAD_WORDS = 64
"""Fewer changed words than this are too few to call a payload (and may be flips)."""
MAX_FLIPPED_WORDS = 64
"""A bit-flip finding covers at most this many words (and at most 1% of the tensor)."""
MIN_PAYLOAD_BITS = 8
BLOCK = 256
"""Words per region block (memory order)."""
MIN_BLOCK_WORDS = 16
"""A block needs this many changed words to be judged."""
TOP_RATE = 0.35
"""Share of a block's changed words whose highest changed bit is ``k-1`` (random payload
bits: about 1/2)."""
CARRY_FLOOR = 0.4
"""Numeric changes flip bit ``k`` in at least about half as many words as bit ``k-1``
(0.4 leaves room for sampling noise); a mask flips it in none."""
ALPHA = 1e-6
"""False-alarm probability per tensor (Bonferroni over blocks)."""


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
    rows: tuple[int, ...] = ()
    """Tensor rows (axis 0) the finding covers."""


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    count = np.zeros(x.shape, dtype=np.uint8)
    while np.any(x):
        count += (x & np.uint64(1)).astype(np.uint8)
        x = x >> np.uint64(1)
    return count


def _log_lower_tail(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Chernoff bound on log P(X <= k), X ~ Bin(n, p), where k/n < p (else 0)."""
    n = np.maximum(n, 1)
    q = np.clip(k / n, 1e-12, 1 - 1e-12)
    p = np.clip(p, 1e-12, 1 - 1e-12)
    kl = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return np.where(q < p, -n * kl, 0.0)


def _runs(blocks: np.ndarray) -> list[np.ndarray]:
    """Sorted block ids split into runs of consecutive ids."""
    if blocks.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(blocks) != 1) + 1
    return np.split(blocks, cuts)


@dataclass(frozen=True)
class _Payload:
    bits: int
    words: np.ndarray
    """Flat indices (into the changed words) of the payload region's words."""
    runs: list[tuple[int, int]]
    top_rate: float
    next_rate: float
    carry_rate: float
    log10_p: float


def _find_payload(
    xor: np.ndarray, top_bit: np.ndarray, changed: np.ndarray, new_low: np.ndarray, mant: int
) -> _Payload | None:
    """The best payload width and its region, judged block by block."""
    block = changed // BLOCK
    n_blocks = int(block.max()) + 1
    n_b = np.bincount(block, minlength=n_blocks)
    judged = n_b >= MIN_BLOCK_WORDS
    if not np.any(judged):
        return None
    threshold = math.log(ALPHA / max(int(judged.sum()), 1))
    # Per block, how many words have each top bit, and how many have a higher one: one
    # pass over the words for every payload width tried.
    levels = int(top_bit.max()) + 2
    per_bit = np.bincount(block * levels + top_bit, minlength=n_blocks * levels)
    per_bit = per_bit.reshape(n_blocks, levels).astype(np.float64)
    at_or_above = np.cumsum(per_bit[:, ::-1], axis=1)[:, ::-1]
    best: _Payload | None = None
    for k in range(MIN_PAYLOAD_BITS, mant + 1):
        top = per_bit[:, k - 1] if k - 1 < levels else np.zeros(n_blocks)
        above = at_or_above[:, k] if k < levels else np.zeros(n_blocks)
        cand = np.flatnonzero(
            judged & (top >= TOP_RATE * n_b) & (above <= np.maximum(2, 0.05 * n_b))
        )
        picked: list[np.ndarray] = []
        runs: list[tuple[int, int]] = []
        log_p = 0.0
        for run in _runs(cand):
            n, t, a = n_b[run].sum(), top[run].sum(), above[run].sum()
            lp = float(_log_lower_tail(np.array(a), np.array(n), np.array(CARRY_FLOOR * t / n)))
            if lp < threshold:
                picked.append(run)
                runs.append((int(run[0]) * BLOCK, int(run[-1] + 1) * BLOCK))
                log_p = min(log_p, lp)
        if not picked:
            continue
        in_region = np.isin(block, np.concatenate(picked))
        words = np.flatnonzero(in_region & (top_bit < k))
        if words.size < MIN_PAYLOAD_WORDS:
            continue
        # A truncating cast masks without carry too, but leaves the low bits zero.
        low_mask = np.uint64((1 << k) - 1)
        if np.mean((new_low[words] & low_mask) == 0) >= 0.5:
            continue
        sel = xor[words]
        top_rate = float(np.mean((sel >> np.uint64(k - 1)) & np.uint64(1)))
        next_rate = float(np.mean((sel >> np.uint64(k - 2)) & np.uint64(1)))
        if min(top_rate, next_rate) < 0.25:
            continue
        carry = float(np.mean(top_bit[in_region] >= k))
        if best is None or words.size > best.words.size:
            best = _Payload(k, words, runs, top_rate, next_rate, carry, log_p / math.log(10))
    return best


def _flips(pair: TensorPair, changed: np.ndarray, xor: np.ndarray) -> BitFinding | None:
    """A handful of words each with one or two sign/exponent bits toggled, or None."""
    pop = _popcount(xor)
    if not np.all(pop <= 2):
        return None
    n = changed.size
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
        _rows(pair, changed),
    )


def _rows(pair: TensorPair, flat: np.ndarray) -> tuple[int, ...]:
    per_row = max(int(np.prod(pair.trusted.shape[1:])), 1)
    return tuple(pair.row_index(int(r)) for r in np.unique(flat // per_row)[:256])


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
        flips = _flips(pair, changed, xor)
        if flips is not None:
            return flips
    if n < MIN_PAYLOAD_WORDS:
        return None
    # Highest changed bit per word (sign/exponent changes count as above any payload).
    top_bit = np.floor(np.log2(np.maximum(xor, 1).astype(np.float64))).astype(np.int64)
    top_bit[touches_high] = width
    found = _find_payload(xor, top_bit, changed, b[changed].astype(np.uint64), mant)
    if found is None:
        return None
    words = changed[found.words]
    outside = np.setdiff1d(np.arange(n), found.words)
    return BitFinding(
        "low-byte payload",
        int(words.size),
        found.bits,
        tuple(int(i) for i in words[:64]),
        {
            "words": int(words.size),
            "fraction_of_tensor": round(words.size / total, 6),
            "payload_bits_per_word": found.bits,
            "payload_bytes_estimate": int(words.size * found.bits // 8),
            "top_bit_rate": round(found.top_rate, 3),
            "carry_rate": round(found.carry_rate, 4),
            "regions": [list(r) for r in found.runs[:16]],
            "log10_p": round(found.log10_p, 1),
            "sign_or_exponent_changes": int(np.sum(touches_high[found.words])),
            "other_changed_words": int(outside.size),
            "other_sign_or_exponent_changes": int(np.sum(touches_high[outside])),
        },
        _rows(pair, words),
    )
