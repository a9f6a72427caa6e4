"""Interpret tensor bytes as numbers: numpy views and float conversion for every dtype."""

from __future__ import annotations

import numpy as np

from scanner.artifact import TensorInfo

_EXTENDED = {
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}
"""Element types numpy lacks, by their ml_dtypes name (ml_dtypes is imported only when
such a tensor is read: it takes a second to import)."""


def numpy_dtype(dtype_name: str) -> np.dtype | None:
    """The numpy dtype of one element (ml_dtypes for bf16 / fp8), or None for packed
    and block-quantized types."""
    if dtype_name in _EXTENDED:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, _EXTENDED[dtype_name]))
    from scanner.dtypes import DTYPES

    return DTYPES[dtype_name].numpy


def as_array(info: TensorInfo, raw: memoryview) -> np.ndarray:
    """A zero-copy view of ``raw`` as ``info`` describes it."""
    npd = numpy_dtype(info.dtype.name)
    if npd is None:
        return np.frombuffer(raw, dtype=np.uint8)
    return np.frombuffer(raw, dtype=npd).reshape(info.shape)


def to_float(info: TensorInfo, raw: memoryview) -> np.ndarray:
    """Values as float32 (float64 for F64 tensors), dequantizing ggml block formats."""
    if info.dtype.is_block_quantized:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType[info.dtype.name]
        blocks = np.frombuffer(raw, dtype=np.uint8)
        row_elems = info.shape[-1] if info.shape else info.n_elements
        row_bytes = info.dtype.nbytes(row_elems)
        values = dequantize(blocks.reshape(-1, row_bytes), qtype)
        return np.asarray(values, dtype=np.float32).reshape(info.shape)
    if info.dtype.name in ("I4", "U4"):
        return _unpack_int4(info, raw).astype(np.float32)
    arr = as_array(info, raw)
    if arr.dtype == np.float64:
        return arr
    return arr.astype(np.float32)


def _unpack_int4(info: TensorInfo, raw: memoryview) -> np.ndarray:
    packed = np.frombuffer(raw, dtype=np.uint8)
    low = packed & 0x0F
    high = packed >> 4
    out = np.empty(packed.size * 2, dtype=np.int16)
    out[0::2] = low
    out[1::2] = high
    out = out[: info.n_elements]
    if info.dtype.name == "I4":
        out = np.where(out >= 8, out - 16, out)
    return out.reshape(info.shape)
