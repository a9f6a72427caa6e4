"""The numpy kernels under the GGUF checks compute exactly what ggml does.

Dequantization is compared bit for bit with ``gguf.quants`` on random blocks (every bit
pattern of codes, scales and mins, enough blocks to take several passes of the nibble
split); the Q8_0 judge is compared with the reference quantizer's bytes on blocks made to
be awkward (rounding ties, several elements at the block's largest magnitude, zero and
one-element blocks), then on copies with bytes changed at random: it must flag exactly
the blocks whose bytes differ.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from scanner.claims.gguf import dequantize_blocks, quantize_rows
from scanner.claims.gguf.judge import judge
from scanner.claims.gguf.layouts import LAYOUTS, NIBBLE_PASS_WORDS

PER_ROW = 256
ROWS = 64


@pytest.mark.parametrize("type_name", sorted(LAYOUTS))
def test_dequantize_is_ggml_bit_for_bit(type_name: str) -> None:
    lay = LAYOUTS[type_name]
    # Enough blocks (half a million elements) that the nibble split takes two passes.
    n = 2 * NIBBLE_PASS_WORDS * 8 // lay.block_elements + 3
    rng = np.random.default_rng(sum(map(ord, type_name)))
    blocks = rng.integers(0, 256, size=(n, lay.block_bytes), dtype=np.uint8)
    # The same blocks as a strided slice of a wider array must decode the same.
    wide = np.zeros((n, lay.block_bytes + 3), dtype=np.uint8)
    wide[:, 1 : 1 + lay.block_bytes] = blocks
    with np.errstate(all="ignore"):  # random scales include NaN and infinity
        ours = dequantize_blocks(blocks, type_name)
        theirs = gguf_dequantize(blocks, GGMLQuantizationType[type_name])
        strided = dequantize_blocks(wide[:, 1 : 1 + lay.block_bytes], type_name)
    assert ours.shape == (n, lay.block_elements)
    _assert_same_floats(ours, np.asarray(theirs, np.float32).reshape(ours.shape))
    _assert_same_floats(strided, ours)


def _assert_same_floats(a: np.ndarray, b: np.ndarray) -> None:
    """Bit for bit, except that any NaN equals any NaN (payloads are not compared)."""
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b))
    assert np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


def _awkward_rows(rng: np.random.Generator) -> np.ndarray:
    """Rows of 32-element blocks that stress the Q8_0 re-derivation."""
    w = rng.normal(0, 0.02, size=(ROWS, PER_ROW)).astype(np.float32)
    blocks = w.reshape(-1, 32)
    nb = blocks.shape[0]
    # Values on a grid of half steps: x * (1/d) lands exactly on k + 0.5, where roundf
    # and round-half-even part ways.
    for b in range(0, nb, 5):
        d = np.float32(2.0 ** -rng.integers(4, 12))
        k = rng.integers(-126, 127, size=32).astype(np.float32)
        blocks[b] = (k + np.float32(0.5) * rng.integers(0, 2, size=32)) * d
        blocks[b, rng.integers(32)] = np.float32(127) * d * rng.choice([-1, 1])
    # Several elements at the largest magnitude, of both signs.
    for b in range(1, nb, 7):
        top = np.abs(blocks[b]).max()
        blocks[b, rng.choice(32, 4, replace=False)] = top * rng.choice([-1, 1], 4)
    blocks[2::11] = 0.0  # all zero: scale 0, codes 0
    for b in range(3, nb, 13):  # one nonzero element
        blocks[b] = 0.0
        blocks[b, rng.integers(32)] = rng.normal(0, 1)
    return w


def _flagged_blocks(w: np.ndarray, raw: np.ndarray) -> tuple[int, np.ndarray]:
    verdict = judge(w, raw, "Q8_0", "exact")
    return verdict.blocks_bad, np.flatnonzero(verdict.bad_per_row).tolist()


def test_q8_0_judge_passes_the_reference_bytes() -> None:
    w = _awkward_rows(np.random.default_rng(11))
    reference = quantize_rows(w, "Q8_0")
    blocks = w.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = blocks * (np.float32(1) / (amax / np.float32(127)))
    assert (np.abs(y - np.trunc(y)) == 0.5).sum() > 1000  # the grid blocks do hold ties
    assert _flagged_blocks(w, reference) == (0, [])


@pytest.mark.parametrize("seed", range(6))
def test_q8_0_judge_flags_exactly_the_changed_blocks(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    w = _awkward_rows(rng)
    reference = quantize_rows(w, "Q8_0")
    deployed = reference.copy()
    flat = deployed.reshape(-1, 34)
    hit = rng.choice(flat.shape[0], size=int(rng.integers(1, 40)), replace=False)
    for b in hit:
        byte = int(rng.integers(34))
        # A code or scale byte moved by a small or a large amount.
        flat[b, byte] = (int(flat[b, byte]) + int(rng.choice([1, -1, 3, 77]))) % 256
    changed = np.flatnonzero((flat != reference.reshape(-1, 34)).any(axis=1))
    blocks_bad, rows = _flagged_blocks(w, deployed)
    assert blocks_bad == changed.size
    assert rows == np.unique(changed // (PER_ROW // 32)).tolist()


def test_q8_0_ties_rounded_the_other_way_fail() -> None:
    """roundf rounds k + 0.5 away from zero; a code rounded to even or towards zero is
    one step off and must fail, a code rounded away from zero must pass."""
    d = np.float32(2.0**-7)
    k = np.arange(-15, 16, dtype=np.float32)
    block = np.concatenate([[np.float32(127) * d], (k + np.float32(0.5)) * d])
    w = np.tile(block.astype(np.float32), (2, 1))  # two rows of one block each
    reference = quantize_rows(w, "Q8_0")
    codes = reference[:, 2:34].view(np.int8)
    assert codes[0, 0] == 127
    assert np.array_equal(codes[0, 1:], np.where(k >= 0, k + 1, k).astype(np.int8))
    assert _flagged_blocks(w, reference) == (0, [])
    for e in (1, 14, 15, 16, 31):  # k = -15, -2, -1, 0, 15
        toward_zero = reference.copy()
        code = int(codes[1, e])
        toward_zero[1, 2 + e] = np.uint8((code - np.sign(code)) % 256)
        assert _flagged_blocks(w, toward_zero) == (1, [1]), e
