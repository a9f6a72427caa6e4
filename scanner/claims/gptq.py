"""GPTQ and AWQ packed-integer layouts (AutoGPTQ / GPTQModel, AutoAWQ GEMM) and encoders.

A linear layer ``P`` with float weight ``W [out, in]`` becomes

* GPTQ: ``P.qweight`` int32 ``[in * bits / 32, out]`` -- codes of input rows ``8k..8k+7``
  (4-bit) packed into row ``k``, input row ``8k + j`` at bits ``4j``; ``P.qzeros`` int32
  ``[groups, out * bits / 32]`` packed the same way along the output axis; ``P.scales``
  float16 ``[groups, out]``; ``P.g_idx`` int32 ``[in]``, the group of each input row
  (act-order permutes it; absent: ``i // group``). The original format stores each zero
  point minus one (``checkpoint_format: gptq``); ``gptq_v2`` stores it as is.
* AWQ (GEMM): ``P.qweight`` int32 ``[in, out * bits / 32]`` packed along the output axis
  in the interleaved order ``0, 2, 4, 6, 1, 3, 5, 7`` (output ``8c + order[i]`` at bits
  ``4i`` of column ``c``); ``P.qzeros`` int32 ``[groups, out * bits / 32]`` the same way,
  zero points as is; ``P.scales`` float16 ``[groups, out]``; groups follow ``i // group``.

Both dequantize as ``W[o, i] = scales[g(i), o] * (q[i, o] - zero[g(i), o])`` with codes
``q = clamp(round(w / scale + zero), 0, 2^bits - 1)``. Round-to-nearest parameters per
(group, output): ``xmin = min(min w, 0)``, ``xmax = max(max w, 0)``; asymmetric
``scale = (xmax - xmin) / maxq``, ``zero = round(-xmin / scale)``; symmetric ``xmax =
max(|xmin|, xmax)``, ``xmin = -xmax``, ``zero = (maxq + 1) / 2``.
"""

from __future__ import annotations

import numpy as np

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``codes [n, m]`` along axis 0 into int32 ``[n * bits / 32, m]`` (GPTQ qweight)."""
    per = 32 // bits
    c = np.asarray(codes, np.uint32)
    n = c.shape[0]
    out = np.zeros((n // per, c.shape[1]), np.uint32)
    for j in range(per):
        out |= c[j::per] << np.uint32(bits * j)
    return out.view(np.int32)


def unpack_rows(packed: np.ndarray, bits: int) -> np.ndarray:
    per = 32 // bits
    p = np.asarray(packed).view(np.uint32)
    out = np.empty((p.shape[0] * per, p.shape[1]), np.uint8)
    mask = np.uint32((1 << bits) - 1)
    for j in range(per):
        out[j::per] = (p >> np.uint32(bits * j)) & mask
    return out


def pack_cols(codes: np.ndarray, bits: int, order: tuple[int, ...] | None = None) -> np.ndarray:
    """Pack ``codes [n, m]`` along axis 1 into int32 ``[n, m * bits / 32]``; ``order``
    (AWQ) says which of each 8 columns goes to nibble ``i``."""
    per = 32 // bits
    order = order or tuple(range(per))
    c = np.asarray(codes, np.uint32)
    out = np.zeros((c.shape[0], c.shape[1] // per), np.uint32)
    for i in range(per):
        out |= c[:, order[i] :: per] << np.uint32(bits * i)
    return out.view(np.int32)


def unpack_cols(packed: np.ndarray, bits: int, order: tuple[int, ...] | None = None) -> np.ndarray:
    per = 32 // bits
    order = order or tuple(range(per))
    p = np.asarray(packed).view(np.uint32)
    out = np.empty((p.shape[0], p.shape[1] * per), np.uint8)
    mask = np.uint32((1 << bits) - 1)
    for i in range(per):
        out[:, order[i] :: per] = (p >> np.uint32(bits * i)) & mask
    return out


def rtn_params(
    w: np.ndarray, group: int, bits: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest scales and zero points ``[groups, out]`` for ``w [out, in]``."""
    maxq = (1 << bits) - 1
    out_f, in_f = w.shape
    g = w.astype(np.float32).reshape(out_f, in_f // group, group)
    xmin = np.minimum(g.min(axis=2), 0)
    xmax = np.maximum(g.max(axis=2), 0)
    if symmetric:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = np.where(both0, -1, xmin)
    xmax = np.where(both0, 1, xmax)
    scale = ((xmax - xmin) / maxq).astype(np.float32)
    zero = np.full_like(scale, (maxq + 1) / 2) if symmetric else np.round(-xmin / scale)
    return scale.T.copy(), zero.T.copy()


def quantize_codes(
    w: np.ndarray, scale: np.ndarray, zero: np.ndarray, group_of: np.ndarray, bits: int
) -> np.ndarray:
    """Codes ``[in, out]`` of ``w [out, in]`` under per-(group, output) parameters."""
    maxq = (1 << bits) - 1
    s = scale[group_of].astype(np.float32)
    z = zero[group_of].astype(np.float32)
    return np.clip(np.rint(w.T.astype(np.float32) / s + z), 0, maxq).astype(np.uint8)


def encode(
    w: np.ndarray,
    *,
    layout: str = "gptq",
    bits: int = 4,
    group: int = 128,
    symmetric: bool = False,
    codes: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    zero: np.ndarray | None = None,
    v2: bool = False,
) -> dict[str, np.ndarray]:
    """The tensors a GPTQ or AWQ linear layer saves for ``w [out, in]`` (keys relative to
    the module: ``qweight``, ``qzeros``, ``scales`` [, ``g_idx``]). Round-to-nearest unless
    ``codes``/``scale``/``zero`` (from a search algorithm) are given."""
    in_f = w.shape[1]
    group = in_f if group in (-1, 0) else group
    if scale is None or zero is None:
        scale, zero = rtn_params(w, group, bits, symmetric)
    scale16 = scale.astype(np.float16)
    group_of = np.arange(in_f) // group
    if codes is None:
        codes = quantize_codes(w, scale16.astype(np.float32), zero, group_of, bits)
    z = np.asarray(zero).astype(np.int64)
    if layout == "awq":
        return {
            "qweight": pack_cols(codes, bits, AWQ_ORDER if bits == 4 else None),
            "qzeros": pack_cols(z.astype(np.uint32), bits, AWQ_ORDER if bits == 4 else None),
            "scales": scale16,
        }
    stored = z if v2 else z - 1
    return {
        "qweight": pack_rows(codes, bits),
        "qzeros": pack_cols((stored & ((1 << bits) - 1)).astype(np.uint32), bits),
        "scales": scale16,
        "g_idx": group_of.astype(np.int32),
    }
