"""bitsandbytes layouts as transformers and bitsandbytes serialize them, and their encoders.

* LLM.int8 (``Linear8bitLt``): ``P.weight`` int8 ``[out, in]`` and ``P.SCB`` float32
  ``[out]`` (the row absmax), optionally ``P.weight_format``. Codes are
  ``round(w * (127 / absmax_row))`` computed in float32.
* 4-bit (``Linear4bit``, NF4 or FP4): ``P.weight`` uint8 ``[n / 2, 1]`` (two codes per
  byte, the first in the high nibble, over the row-major flattened weight), ``P.weight.
  absmax`` (float32 per block of ``blocksize`` elements), ``P.weight.quant_map`` (the 16
  code values), ``P.weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``: JSON bytes with
  ``quant_type``, ``blocksize``, ``dtype``, ``shape`` and, with double quantization,
  ``nested_blocksize``, ``nested_offset``). With double quantization ``absmax`` is uint8
  codes of ``absmax - nested_offset`` under ``P.weight.nested_absmax`` (float32 per
  ``nested_blocksize`` blocks) and ``P.weight.nested_quant_map`` (256 values).

The encoder follows the published algorithm: per block of the flattened weight (taken in
``dtype`` then float32), ``absmax = max |w|``, ``x = clamp(w * (1 / absmax), -1, 1)``,
code = the bucket of ``x`` among the midpoints of the sorted code values (a value on a
midpoint takes the lower bucket); FP4's code values are not sorted, so the bucket is
mapped through the sort order. Double quantization takes ``offset = mean(absmax)`` and
quantizes ``absmax - offset`` blockwise the same way with the 256-value map (here by the
exact midpoints; bitsandbytes' CPU kernel uses an approximate lookup search and lands on
the other neighbour for about one block in 500, always within a few hundredths of a gap
of the wall, which the checker accepts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

NF4 = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)
# FP4 (e2m1 with bitsandbytes' bias): bit 3 is the sign; the magnitudes are
# 0, 0.0625, 8, 12, 4, 6, 2, 3 (x 1/12).
FP4 = (
    np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3], np.float64)
    / 12.0
).astype(np.float32)

STATE_PREFIX = "quant_state.bitsandbytes__"


@dataclass(frozen=True)
class Codebook:
    """Code values and the sorted midpoints that bucket a normalized value."""

    values: np.ndarray
    order: np.ndarray
    bounds: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> Codebook:
        v = np.asarray(values, np.float32)
        order = np.argsort(v, kind="stable")
        s = v[order]
        return cls(v, order, ((s[:-1] + s[1:]) / np.float32(2)).astype(np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Code index per element of ``x`` (normalized to [-1, 1])."""
        # torch.bucketize(right=False): first i with x <= bounds[i].
        return self.order[np.searchsorted(self.bounds, x, side="left")].astype(np.uint8)

    def nearest_margin(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Distance of ``x`` to the nearest bucket wall, in units of the local gap."""
        pos = np.searchsorted(self.bounds, x, side="left")
        lo = np.where(pos > 0, self.bounds[np.maximum(pos - 1, 0)], -np.inf)
        hi = np.where(
            pos < self.bounds.size, self.bounds[np.minimum(pos, self.bounds.size - 1)], np.inf
        )
        return np.minimum(np.abs(x - lo), np.abs(hi - x))


def blockwise_absmax(flat: np.ndarray, blocksize: int) -> np.ndarray:
    n = flat.size
    full = n - n % blocksize
    am = np.abs(flat[:full]).reshape(-1, blocksize).max(axis=1) if full else np.zeros(0, np.float32)
    if n % blocksize:
        am = np.concatenate([am, [np.abs(flat[full:]).max()]])
    return am.astype(np.float32)


def normalize(flat: np.ndarray, absmax: np.ndarray, blocksize: int) -> np.ndarray:
    """``clamp(w * (1 / absmax), -1, 1)`` per block, in float32 as bitsandbytes does."""
    inv = (np.float32(1.0) / np.maximum(absmax, np.float32(1e-38))).astype(np.float32)
    per = np.repeat(inv, blocksize)[: flat.size]
    return np.clip(flat.astype(np.float32) * per, -1, 1).astype(np.float32)


def quantize_blockwise(
    flat: np.ndarray, values: np.ndarray, blocksize: int
) -> tuple[np.ndarray, np.ndarray]:
    """Codes (uint8 indices into ``values``) and per-block absmax."""
    flat = np.asarray(flat, np.float32).reshape(-1)
    am = blockwise_absmax(flat, blocksize)
    return Codebook.of(values).encode(normalize(flat, am, blocksize)), am


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    c = np.asarray(codes, np.uint8).reshape(-1)
    if c.size % 2:
        c = np.concatenate([c, np.zeros(1, np.uint8)])
    return ((c[0::2] << 4) | c[1::2]).astype(np.uint8).reshape(-1, 1)


def unpack_nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(packed, np.uint8).reshape(-1)
    out = np.empty(b.size * 2, np.uint8)
    out[0::2] = b >> 4
    out[1::2] = b & 0x0F
    return out[:n]


def dynamic_map() -> np.ndarray:
    """bitsandbytes' signed dynamic 8-bit map (``create_dynamic_map(signed=True)``), used
    for double quantization of absmax."""
    max_exponent_bits = 7
    total_bits = 8
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    data: list[float] = []
    for i in range(max_exponent_bits):
        fraction_items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1
        boundaries = np.linspace(0.1, 1, fraction_items, dtype=np.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += (10 ** (-(max_exponent_bits - 1) + i) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = np.linspace(0.1, 1, additional_items + 1, dtype=np.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += (10 ** (-(max_exponent_bits - 1) + i) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    gap = 256 - len(data)
    data += [0.0] * gap
    return np.sort(np.array(data, dtype=np.float32))


def encode_4bit(
    w: np.ndarray,
    quant_type: str = "nf4",
    blocksize: int = 64,
    double_quant: bool = False,
    nested_map: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The tensors ``Linear4bit`` saves for ``w`` (keys relative to ``P.weight``: ``""``
    for the packed codes, ``.absmax``, ``.quant_map``, ...). ``w`` is taken in its own
    dtype (the state's ``dtype``), then float32. ``nested_map``: the 256-value map of
    double quantization (default :func:`dynamic_map`, which equals bitsandbytes' within
    one float32 ulp: torch's vectorized ``linspace`` rounds a few points differently)."""
    values = NF4 if quant_type == "nf4" else FP4
    flat = np.asarray(w).astype(np.float32).reshape(-1)
    codes, absmax = quantize_blockwise(flat, values, blocksize)
    state: dict[str, object] = {
        "quant_type": quant_type,
        "blocksize": blocksize,
        "dtype": _torch_dtype_name(np.asarray(w).dtype),
        "shape": list(np.asarray(w).shape),
    }
    out: dict[str, np.ndarray] = {"": pack_nibbles(codes), ".quant_map": values.copy()}
    if double_quant:
        offset = np.float32(absmax.mean(dtype=np.float32))
        nested = dynamic_map() if nested_map is None else np.asarray(nested_map, np.float32)
        q8, nabs = quantize_blockwise(absmax - offset, nested, 256)
        out[".absmax"] = q8
        out[".nested_absmax"] = nabs
        out[".nested_quant_map"] = nested
        state.update(
            {"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": float(offset)}
        )
    else:
        out[".absmax"] = absmax
    out["." + STATE_PREFIX + quant_type] = np.frombuffer(
        json.dumps(state).encode(), dtype=np.uint8
    ).copy()
    return out


def encode_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Linear8bitLt`` weight and SCB: row-wise absmax, codes round(w * 127 / absmax)."""
    a = np.asarray(w).astype(np.float32)
    scb = np.abs(a).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        # float64 product and quotient: bitsandbytes' kernel lands on this side of ties.
        codes = np.rint(a.astype(np.float64) * 127.0 / scb[:, None].astype(np.float64))
    return np.nan_to_num(codes).astype(np.int8), scb


def _torch_dtype_name(dt: np.dtype) -> str:
    name = np.dtype(dt).name
    return {"float16": "float16", "float32": "float32", "bfloat16": "bfloat16"}.get(name, name)


def parse_state(raw: np.ndarray) -> dict[str, object]:
    """The JSON quant state stored as a uint8 tensor."""
    from scanner.errors import MalformedArtifactError

    try:
        state = json.loads(bytes(np.asarray(raw, np.uint8).reshape(-1)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedArtifactError(f"bitsandbytes quant state is not JSON: {exc}") from None
    if not isinstance(state, dict):
        raise MalformedArtifactError("bitsandbytes quant state is not a JSON object")
    return state
