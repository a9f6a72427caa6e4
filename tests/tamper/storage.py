"""How the tamper matrix writes weights to disk, the way the tools users run write them:
safetensors in F32 / F16 / BF16, int8 codes with per-row scales (the vendor layout
``x.weight`` I8 + ``x.weight_scale``), ONNX initializers, and GGUF tensors edited in place
(float values, or ggml block codes at llama.cpp's byte positions).

Nothing here imports the scanner: the files are written with the format libraries
(safetensors, onnx, gguf) and read back by the scanner only through the CLI.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import save_file

from tests.claims.gguf_files import BLOCK, CODE_MAX, get_code, set_code

FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

EPS = {"F32": 2.0**-23, "F16": 2.0**-10, "BF16": 2.0**-7}
"""Machine epsilon of each float storage: round-to-nearest moves a value by at most
``EPS / 2`` of its own magnitude."""


def rounding_bound(w: np.ndarray, storage: str) -> float:
    """The largest rounding error storing ``w`` in ``storage`` can make: half an ulp at
    the tensor's largest magnitude (for codes: half a quantization step, taken as the
    int8 per-row step at the largest row)."""
    peak = float(np.max(np.abs(w))) or 1.0
    if storage in EPS:
        return 0.5 * EPS[storage] * 2.0 ** np.floor(np.log2(peak)) * 2.0
    return 0.5 * peak / 127.0


def as_stored(w: np.ndarray, storage: str) -> np.ndarray:
    """``w`` rounded to nearest-even in a float storage, back as float64."""
    t = torch.from_numpy(np.asarray(w, dtype=np.float32)).to(FLOAT_DTYPES[storage])
    return t.to(torch.float64).numpy()


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], storage: str) -> Path:
    """Float tensors in ``storage``; integer tensors as they are."""
    out: dict[str, torch.Tensor] = {}
    for name, a in tensors.items():
        t = torch.from_numpy(np.ascontiguousarray(a))
        out[name] = t.to(FLOAT_DTYPES[storage]) if a.dtype.kind == "f" else t
    save_file(out, str(path))
    return path


# -- int8 codes with per-row scales -------------------------------------------------


def int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row (output channel) int8: scale = row absmax / 127, codes =
    round(w / scale), as vendors' weight-only int8 exports store them."""
    rows = np.asarray(w, dtype=np.float32).reshape(w.shape[0], -1)
    s = (np.abs(rows).max(axis=1) / np.float32(127.0)).astype(np.float32)
    s = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)
    codes = np.clip(np.rint(rows / s[:, None]), -127, 127).astype(np.int8)
    return codes.reshape(w.shape), s


def write_int8(path: Path, tensors: Mapping[str, np.ndarray], quantized: set[str]) -> Path:
    """``quantized`` tensors as I8 codes + ``_scale``; the others as F32. A tensor given
    already as int8 codes (tampered) keeps its codes and the faithful scale of
    ``tensors[name + '_float']``."""
    out: dict[str, np.ndarray] = {}
    for name, a in tensors.items():
        if name.endswith("_float"):
            continue
        if name in quantized:
            if a.dtype == np.int8:
                _, s = int8_rows(tensors[name + "_float"])
                codes = a
            else:
                codes, s = int8_rows(a)
            out[name], out[name + "_scale"] = codes, s
        else:
            out[name] = np.asarray(a, dtype=np.float32) if a.dtype.kind == "f" else a
    return write_safetensors(path, out, "F32")


def shift_codes(
    codes: np.ndarray, mask: np.ndarray, how: str, rng: np.random.Generator, lo: int, hi: int
) -> np.ndarray:
    """Codes of ``mask`` moved ``how`` (``"1"``/``"3"`` steps with random sign, turning
    back at a rail; ``"rail"``: to the far rail), within ``[lo, hi]``."""
    c = codes.astype(np.int64)
    if how == "rail":
        mid = (lo + hi) / 2
        c[mask] = np.where(c[mask] >= mid, lo, hi)
    else:
        step = int(how)
        sign = rng.choice(np.array([-1, 1]), size=int(mask.sum()))
        moved = c[mask] + sign * step
        c[mask] = np.where((moved > hi) | (moved < lo), c[mask] - sign * step, moved)
    return c.astype(codes.dtype)


# -- ONNX initializers ----------------------------------------------------------------


def onnx_initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def write_onnx(src: Path, out: Path, changed: Mapping[str, np.ndarray]) -> Path:
    """A copy of the ONNX model ``src`` with some initializers replaced (dtype kept)."""
    model = onnx.load(str(src))
    for t in model.graph.initializer:
        if t.name in changed:
            old = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(changed[t.name].astype(old.dtype), t.name))
    onnx.save(model, str(out))
    return out


# -- GGUF -----------------------------------------------------------------------------


def gguf_tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (ggml type name, raw data as the gguf package returns it: float values
    in numpy row-major shape, or ``(rows, row_bytes)`` uint8 blocks)."""
    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, np.array(t.data)) for t in reader.tensors}


def write_gguf(src: Path, out: Path, changed: Mapping[str, np.ndarray]) -> Path:
    """A byte copy of ``src`` with the data of some tensors replaced by arrays of the same
    stored type and byte size (float values or raw blocks)."""
    reader = gguf.GGUFReader(str(src))
    spans = {t.name: (int(t.data_offset), int(t.n_bytes), t.data.dtype) for t in reader.tensors}
    del reader
    shutil.copyfile(src, out)
    with open(out, "r+b") as fh:
        for name, data in changed.items():
            offset, nbytes, dtype = spans[name]
            blob = np.ascontiguousarray(data, dtype=dtype).tobytes()
            if len(blob) != nbytes:
                raise ValueError(f"{name}: {len(blob)} bytes for a {nbytes}-byte tensor")
            fh.seek(offset)
            fh.write(blob)
    return out


def shift_ggml(
    blocks: np.ndarray, qtype: str, mask: np.ndarray, how: str, rng: np.random.Generator
) -> np.ndarray:
    """``blocks`` with the codes of the ``(rows, cols)`` ``mask`` moved ``how`` (see
    :func:`shift_codes`), written at llama.cpp's bit positions."""
    per, size = BLOCK[qtype]
    lo, hi = (-127, 127) if qtype == "Q8_0" else (0, CODE_MAX[qtype])
    out = blocks.copy()
    rows, cols = np.nonzero(mask)
    old = np.array(
        [
            get_code(out[r, (c // per) * size : (c // per + 1) * size], qtype, c % per)
            for r, c in zip(rows, cols, strict=True)
        ],
        dtype=np.int64,
    )
    flat = np.ones(old.size, dtype=bool)
    new = shift_codes(old, flat, how, rng, lo, hi)
    for r, c, code in zip(rows, cols, new, strict=True):
        blk = out[r, (c // per) * size : (c // per + 1) * size]
        set_code(blk, qtype, c % per, int(code))
    return out
