"""Plain tampering of ggml codes and scales, judged block by block and row by row.

The hosts are llama.cpp's own quantizations of a real LLM (SmolLM2, from its float
weights) and of a vendor's Gemma 3 Q4_K_M (re-quantized by llama.cpp); the storage cells
are Q8_0, Q4_K and Q6_K. Regions come from ``tests/tamper/regions.py`` and are applied
to the codes (one element, three elements, a row, a 16x16 square, a whole ggml block, a
scattered 0.1%) or to the block scales (one block, a row of blocks, scattered blocks),
raised by one step, by a few steps, or to the top of their range. Every cell must fail
and be localized to the tampered rows; the faithful files pass.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from scanner.claims import check_claim
from tests.claims.gguf_files import (
    BLOCK,
    LlamaFiles,
    copy_with,
    get_code,
    raise_code,
    raise_scale,
    raw_blocks,
    subset,
)
from tests.tamper.regions import region_mask

# storage -> (host, file type or None, tensor, claim kind, claim type)
HOSTS = {
    "Q8_0": ("smollm", "Q8_0", "blk.1.ffn_down.weight", "gguf", "q8_0"),
    "Q4_K": ("smollm", "Q4_K_M", "blk.1.ffn_down.weight", "gguf", "q4_k"),
    "Q6_K": ("smollm", "Q4_K_M", "blk.2.ffn_down.weight", "gguf", "q4_k"),
    "Q4_K-vendor": ("gemma", "Q4_K_M", "blk.3.attn_output.weight", "requantize", "q4_k"),
    "Q6_K-vendor": ("gemma", "Q6_K", "blk.5.ffn_down.weight", "requantize", "q6_k"),
}
SIBLINGS = 2


@pytest.fixture(scope="session")
def llama(work: Path) -> LlamaFiles:
    folder = work / "llamacpp"
    folder.mkdir(exist_ok=True)
    return LlamaFiles(folder)


@pytest.fixture(scope="session")
def cells(llama: LlamaFiles, work: Path) -> dict[str, tuple[Path, Path, str, str, str]]:
    """storage -> (trusted subset, faithful deployed subset, tensor, kind, type)."""
    out = {}
    for cell, (host, ftype, tensor, kind, qtype) in HOSTS.items():
        if host == "smollm":
            trusted_full, deployed_full = llama.base, llama.smollm(ftype)
        else:
            trusted_full, deployed_full = llama.gemma, llama.gemma_requantized(ftype)
        layer = ".".join(tensor.split(".")[:2])
        kind_suffix = tensor.split(".", 2)[2]
        others = [f"blk.{i}.{kind_suffix}" for i in range(4) if f"blk.{i}" != layer]
        stored = raw_blocks(deployed_full, tensor)[1]
        names = [tensor, *[n for n in others if raw_blocks(deployed_full, n)[1] == stored]]
        with_type = names[: SIBLINGS + 1]
        t = subset(trusted_full, work / f"rows_{cell}_trusted.gguf", with_type)
        d = subset(deployed_full, work / f"rows_{cell}_deployed.gguf", with_type)
        out[cell] = (t, d, tensor, kind, qtype)
    return out


@pytest.mark.parametrize("cell", list(HOSTS))
def test_faithful_llamacpp_blocks_pass(cells, cell: str) -> None:
    trusted, deployed, tensor, kind, qtype = cells[cell]
    result = check_claim(kind, qtype, trusted, deployed)
    assert result.holds, result.message
    assert tensor in {v.tensor for v in result.tensors}


CODE_REGIONS = ("element", "elements3", "row", "block16", "ggml-block", "scattered")
MAGNITUDES = {"+1": 1, "+3": 3, "rail": None}


def _code_mask(region: str, blocks: np.ndarray, qtype: str, rng) -> np.ndarray:
    per_block, _ = BLOCK[qtype]
    rows = blocks.shape[0]
    per_row = blocks.shape[1] // BLOCK[qtype][1] * per_block
    if region == "ggml-block":
        mask = np.zeros((rows, per_row), dtype=bool)
        r = int(rng.integers(rows))
        b = int(rng.integers(per_row // per_block))
        mask[r, b * per_block : (b + 1) * per_block] = True
        return mask
    return region_mask(region, (rows, per_row), rng)


@pytest.mark.parametrize("magnitude", list(MAGNITUDES))
@pytest.mark.parametrize("region", CODE_REGIONS)
@pytest.mark.parametrize("cell", list(HOSTS))
def test_code_tampering_fails_and_is_localized(
    cells, work: Path, cell: str, region: str, magnitude: str
) -> None:
    if cell.endswith("-vendor") and magnitude != "+1":
        return  # the vendor hosts repeat the hardest magnitude only
    trusted, deployed, tensor, kind, qtype = cells[cell]
    blocks, stored, _ = raw_blocks(deployed, tensor)
    per_block, block_bytes = BLOCK[stored]
    rng = np.random.default_rng(zlib.crc32(f"{cell}/{region}/{magnitude}".encode()))
    mask = _code_mask(region, blocks, stored, rng)
    per_row = mask.shape[1]
    changed_rows = set()
    for r, c in zip(*np.nonzero(mask), strict=True):
        b, e = divmod(int(c), per_block)
        block = blocks[r, b * block_bytes : (b + 1) * block_bytes]
        if raise_code(block, stored, e, MAGNITUDES[magnitude]):
            changed_rows.add(int(r))
    assert changed_rows, "the region held only codes already at the top"
    assert per_row == blocks.shape[1] // block_bytes * per_block
    out = copy_with(deployed, work / f"codes_{cell}_{region}_{magnitude}.gguf", {tensor: blocks})
    result = check_claim(kind, qtype, trusted, out)
    assert not result.holds, (cell, region, magnitude)
    failed = [v for v in result.tensors if not v.ok]
    assert [v.tensor for v in failed] == [tensor], result.message
    assert set(failed[0].rows) <= changed_rows
    if region == "row":
        assert set(failed[0].rows) == changed_rows


SCALE_REGIONS = ("one-block", "row", "scattered")


def _sub_scale(block: np.ndarray, qtype: str, j: int) -> int:
    if qtype == "Q6_K":
        return abs(int(block[192 + j].astype(np.int8)))
    s = block[4:16]
    if j < 4:
        return int(s[j]) & 63
    return (int(s[j + 4]) & 0x0F) | ((int(s[j - 4]) >> 6) << 4)


def _largest_codes(block: np.ndarray, qtype: str) -> list[tuple[int, int]]:
    """(sub-block, its largest code magnitude), largest first: the sub-scales a tamperer
    moves to shift values the most."""
    group = 32 if qtype == "Q4_K" else 16
    zero = 0 if qtype == "Q4_K" else 32
    mags = [abs(get_code(block, qtype, e) - zero) for e in range(256)]
    per = [max(mags[j * group : (j + 1) * group]) for j in range(256 // group)]
    return sorted(enumerate(per), key=lambda jt: -jt[1])


@pytest.mark.parametrize("magnitude", ["one-step", "two-steps", "rail"])
@pytest.mark.parametrize("region", SCALE_REGIONS)
@pytest.mark.parametrize("cell", ["Q8_0", "Q4_K", "Q6_K"])
def test_scale_tampering_fails_and_is_localized(
    cells, work: Path, cell: str, region: str, magnitude: str
) -> None:
    """Scale edits that move the block's largest value by one quantization step or more
    (the stated bound; Q8_0's float16 scale from one ulp, as its blocks re-derive byte
    for byte) up to the scale's largest value."""
    trusted, deployed, tensor, kind, qtype = cells[cell]
    blocks, stored, _ = raw_blocks(deployed, tensor)
    _, block_bytes = BLOCK[stored]
    rows, n_blocks = blocks.shape[0], blocks.shape[1] // block_bytes
    rng = np.random.default_rng(zlib.crc32(f"{cell}/{region}/{magnitude}".encode()))
    if region == "one-block":
        targets = [(int(rng.integers(rows)), int(rng.integers(n_blocks)))]
    elif region == "row":
        r = int(rng.integers(rows))
        targets = [(r, b) for b in range(n_blocks)]
    else:
        flat = rng.choice(rows * n_blocks, size=max(3, rows * n_blocks // 1000), replace=False)
        targets = [divmod(int(f), n_blocks) for f in flat]
    changed_rows = set()
    for r, b in targets:
        block = blocks[r, b * block_bytes : (b + 1) * block_bytes]
        if stored == "Q8_0":
            if raise_scale(
                block, stored, 0, {"one-step": 1, "two-steps": 2, "rail": None}[magnitude]
            ):
                changed_rows.add(r)
            continue
        for j, top in _largest_codes(block, stored):
            one = max(1, math.ceil(1.05 * _sub_scale(block, stored, j) / max(top, 1)))
            steps = {"one-step": one, "two-steps": 2 * one, "rail": None}[magnitude]
            if raise_scale(block, stored, j, steps):
                changed_rows.add(r)
                break
    assert changed_rows
    out = copy_with(deployed, work / f"scales_{cell}_{region}_{magnitude}.gguf", {tensor: blocks})
    result = check_claim(kind, qtype, trusted, out)
    assert not result.holds, (cell, region, magnitude)
    failed = [v for v in result.tensors if not v.ok]
    assert [v.tensor for v in failed] == [tensor], result.message
    assert set(failed[0].rows) <= changed_rows
