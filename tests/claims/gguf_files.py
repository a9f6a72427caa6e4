"""Real GGUF files for claim tests: llama.cpp's own quantizations of SmolLM2 and of a
vendor's Gemma 3 Q4_K_M, built once per session (the llama.cpp tools are built from the
pinned llama-cpp-python sdist by ``fixtures.llamacpp``), plus a byte-level editor of ggml
codes and scales written here, independently of the scanner's decoders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from fixtures import real_model
from fixtures.gguf_copy import copy_gguf
from fixtures.llamacpp import float_base, quantize, write_imatrix
from fixtures.real_models import GEMMA3_Q4_K_M, MODELS, SMOLLM_Q4_1, derived_file, weights_only
from scanner.formats import open_artifact

LAYERS = 4
"""SmolLM2 blocks kept in the float base."""
VOCAB = 4096
"""Tokens kept (embedding rows): the full 49,152 would be most of what every llama.cpp
quantization and claim check here spends its time on, and no type rule depends on it."""


class LlamaFiles:
    """Lazily built llama.cpp outputs, cached for the session."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[tuple[str, str, bool], Path] = {}
        self._base: Path | None = None
        self._imatrix: Path | None = None

    @property
    def base(self) -> Path:
        if self._base is None:
            # Derived from the pinned wheel only: built once, kept with the fixtures.
            self._base = derived_file(
                f"smollm2-135m-{MODELS[SMOLLM_Q4_1].sha256[:16]}-f32-{LAYERS}blocks-vocab{VOCAB}.gguf",
                lambda out: float_base(real_model(SMOLLM_Q4_1), out, layers=LAYERS, vocab=VOCAB),
            )
        return self._base

    @property
    def imatrix(self) -> Path:
        if self._imatrix is None:
            self._imatrix = write_imatrix(self.base, self.folder / "smollm2.imatrix.dat")
        return self._imatrix

    @property
    def gemma(self) -> Path:
        """The vendor's Gemma 3 Q4_K_M: its tensors and metadata, not its tokenizer."""
        return weights_only(GEMMA3_Q4_K_M)

    def smollm(self, ftype: str, *, imatrix: bool = False) -> Path:
        key = ("smollm", ftype, imatrix)
        if key not in self._cache:
            out = self.folder / f"smollm2_{ftype}{'_imatrix' if imatrix else ''}.gguf"
            self._cache[key] = quantize(
                self.base, out, ftype, imatrix=self.imatrix if imatrix else None
            )
        return self._cache[key]

    def gemma_requantized(self, ftype: str) -> Path:
        key = ("gemma", ftype, False)
        if key not in self._cache:
            out = self.folder / f"gemma3_requant_{ftype}.gguf"
            self._cache[key] = quantize(self.gemma, out, ftype, extra=("--allow-requantize",))
        return self._cache[key]


def copy_with(src: Path, out: Path, edits: dict[str, np.ndarray]) -> Path:
    """A byte copy of ``src`` with the raw bytes of some tensors replaced."""
    shutil.copyfile(src, out)
    with open_artifact(src) as art:
        spans = {n: (art.tensors[n].source.offset, art.tensors[n].nbytes) for n in edits}
    with open(out, "r+b") as fh:
        for name, data in edits.items():
            offset, nbytes = spans[name]
            blob = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
            assert len(blob) == nbytes
            fh.seek(offset)
            fh.write(blob)
    return out


def raw_blocks(path: Path, name: str) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """(blocks as ``(rows, row_bytes)`` uint8 copy, ggml type, shape) of one tensor."""
    with open_artifact(path) as art:
        info = art.tensors[name]
        per_row = info.shape[-1]
        rows = info.n_elements // per_row
        data = np.frombuffer(art.raw(name), dtype=np.uint8).reshape(rows, -1).copy()
        return data, info.dtype.name, info.shape


def subset(src: Path, out: Path, names: list[str]) -> Path:
    """A GGUF holding only ``names`` of ``src``, their bytes and metadata copied."""
    return copy_gguf(src, out, names)


# -- codes and scales, by byte position (llama.cpp's block layouts) -------------------

BLOCK = {"Q8_0": (32, 34), "Q4_K": (256, 144), "Q6_K": (256, 210)}
CODE_MAX = {"Q8_0": 127, "Q4_K": 15, "Q6_K": 63}
SCALES = {"Q8_0": 1, "Q4_K": 8, "Q6_K": 16}
SCALE_MAX = {"Q4_K": 63, "Q6_K": 127}


def get_code(block: np.ndarray, qtype: str, e: int) -> int:
    if qtype == "Q8_0":
        return int(block[2 + e].astype(np.int8))
    if qtype == "Q4_K":
        chunk, half, lane = e // 64, (e % 64) // 32, e % 32
        byte = int(block[16 + 32 * chunk + lane])
        return byte >> 4 if half else byte & 0x0F
    half, r = divmod(e, 128)
    quarter, lane = divmod(r, 32)
    low = int(block[64 * half + lane + 32 * (quarter % 2)])
    low = low >> 4 if quarter >= 2 else low & 0x0F
    high = (int(block[128 + 32 * half + lane]) >> (2 * quarter)) & 3
    return low | (high << 4)


def set_code(block: np.ndarray, qtype: str, e: int, code: int) -> None:
    if qtype == "Q8_0":
        block[2 + e] = np.int8(code).view(np.uint8)
        return
    if qtype == "Q4_K":
        chunk, half, lane = e // 64, (e % 64) // 32, e % 32
        i = 16 + 32 * chunk + lane
        byte = int(block[i])
        block[i] = (byte & 0x0F) | (code << 4) if half else (byte & 0xF0) | code
        return
    half, r = divmod(e, 128)
    quarter, lane = divmod(r, 32)
    i = 64 * half + lane + 32 * (quarter % 2)
    byte = int(block[i])
    block[i] = (byte & 0x0F) | ((code & 15) << 4) if quarter >= 2 else (byte & 0xF0) | (code & 15)
    j = 128 + 32 * half + lane
    mask = 3 << (2 * quarter)
    block[j] = (int(block[j]) & ~mask & 0xFF) | (((code >> 4) & 3) << (2 * quarter))


def raise_code(block: np.ndarray, qtype: str, e: int, steps: int | None) -> bool:
    """Raise element ``e``'s code by ``steps`` (``None``: to the top of the range).
    Returns False when the code is already at the top (no change possible)."""
    old = get_code(block, qtype, e)
    top = CODE_MAX[qtype]
    new = top if steps is None else min(top, old + steps)
    if new == old:
        return False
    set_code(block, qtype, e, new)
    return True


def raise_scale(block: np.ndarray, qtype: str, j: int, steps: int | None) -> bool:
    """Raise sub-scale ``j`` (Q4_K 6-bit, Q6_K int8) or the float16 scale (Q8_0: one
    ulp per step) by ``steps`` (``None``: to its largest value)."""
    if qtype == "Q8_0":
        bits = int(block[0:2].view(np.uint16)[0])
        sign, mag = bits & 0x8000, bits & 0x7FFF
        new = 0x7BFF if steps is None else min(0x7BFF, mag + steps)
        if new == mag:
            return False
        block[0:2] = np.array([sign | new], dtype=np.uint16).view(np.uint8)
        return True
    if qtype == "Q6_K":
        old = int(block[192 + j].astype(np.int8))
        new = 127 if steps is None else min(127, old + steps)
        if new == old:
            return False
        block[192 + j] = np.int8(new).view(np.uint8)
        return True
    s = block[4:16]
    low = int(s[j]) if j < 4 else int(s[j + 4])
    old = low & 63 if j < 4 else (low & 0x0F) | ((int(s[j - 4]) >> 6) << 4)
    new = 63 if steps is None else min(63, old + steps)
    if new == old:
        return False
    if j < 4:
        s[j] = (int(s[j]) & 0xC0) | new
    else:
        s[j + 4] = (int(s[j + 4]) & 0xF0) | (new & 0x0F)
        s[j - 4] = (int(s[j - 4]) & 0x3F) | ((new >> 4) << 6)
    return True
