"""Quantizations and tampering the claim tests make themselves, from the formats'
definitions, never from the scanner's red-team planters: a detector is not tested with
the planter written for it.

* :func:`rtn_int8`: round-to-nearest int8 / uint8 with stored scales (the faithful
  quantization a claim must accept);
* :func:`negate_codes`: codes mirrored around their zero point (a large weight becomes
  its opposite), on chosen elements;
* :func:`press_to_walls`: every weight moved inside its bin to within ``margin`` of the
  wall it is nearest to (the footprint of a box-constrained quantization attack), on
  int8 per-channel, Q8_0 or Q4_0 bins; the elements that set a scale stay put;
* :func:`negate_onnx_codes`: the same edit in a quantized ONNX file's initializer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Quantized:
    codes: np.ndarray
    scale: np.ndarray
    """One per output channel (axis 0), or a single value."""
    zero_point: np.ndarray


def rtn_int8(w: np.ndarray, *, per_channel: bool = True, symmetric: bool = True) -> Quantized:
    """int8 codes of ``w`` by round-half-to-even: symmetric (scale absmax / 127, zero
    point 0) or asymmetric (scale (max - min) / 255 over a range holding 0), per output
    channel or per tensor."""
    w = np.asarray(w, dtype=np.float32)
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    hi = np.maximum(rows.max(axis=1), 0.0)
    lo = np.minimum(rows.min(axis=1), 0.0)
    if symmetric:
        scale = (np.maximum(hi, -lo) / 127.0).astype(np.float32)
        zp = np.zeros_like(scale)
    else:
        scale = ((hi - lo) / 255.0).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.round(-128.0 - lo / safe), -128, 127).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    codes = np.clip(np.rint(rows / scale[:, None]) + zp[:, None], -128, 127)
    return Quantized(codes.astype(np.int8).reshape(w.shape), scale, zp.astype(np.int8))


def largest(w: np.ndarray, fraction: float) -> np.ndarray:
    """Flat indices of the ``fraction`` largest-magnitude elements (at least one)."""
    flat = np.abs(np.asarray(w, dtype=np.float64)).reshape(-1)
    k = max(1, round(flat.size * fraction))
    return np.argsort(-flat, kind="stable")[:k]


def negate_codes(codes: np.ndarray, flat: np.ndarray, zero_point: int = 0) -> np.ndarray:
    """``codes`` with the elements at ``flat`` mirrored around ``zero_point``."""
    info = np.iinfo(codes.dtype)
    out = np.array(codes, copy=True)
    view = out.reshape(-1)
    mirrored = 2 * zero_point - view[flat].astype(np.int64)
    view[flat] = np.clip(mirrored, info.min, info.max).astype(codes.dtype)
    return out


def _bins(w: np.ndarray, grid: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Steps (broadcastable to the rows of ``w``'s 2-D view, or to blocks of 32) and the
    view, and the largest code magnitude, of ``grid``."""
    if grid == "int8-per-channel":
        rows = w.reshape(w.shape[0], -1)
        return rows, np.abs(rows).max(axis=1, keepdims=True) / 127.0, 127.0
    blocks = w.reshape(-1, 32)
    if grid == "q8_0":
        d = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
        return blocks, d.astype(np.float16).astype(np.float32), 127.0
    if grid == "q4_0":
        # ggml: d = (the value of largest magnitude) / -8, codes round(x / d) in [-8, 7]
        pick = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
        return blocks, (pick / -8.0)[:, None].astype(np.float16).astype(np.float32), 8.0
    raise ValueError(grid)


def press_to_walls(w: np.ndarray, grid: str, margin: float, seed: int = 0) -> np.ndarray:
    """Each weight moved to a depth drawn uniformly in ``[0, margin]`` steps from the wall
    of its bin it is nearest to; its code is unchanged, and so are the weights at the
    largest code, which set the scale."""
    w = np.asarray(w, dtype=np.float32)
    view, step, top = _bins(w, grid)
    step = np.where(step != 0, step, 1.0)
    q = view / step
    code = np.rint(q)
    side = np.where(q >= code, 1.0, -1.0)
    depth = np.random.default_rng(seed).uniform(0.0, margin, q.shape)
    pressed = code + side * (0.5 - depth)
    keep = np.abs(q) >= top - 0.5
    return np.where(keep, view, pressed * step).astype(np.float32).reshape(w.shape)


def negate_onnx_codes(src: Path, dst: Path, initializer: str, flat: np.ndarray) -> None:
    """A copy of the quantized ONNX file ``src`` whose integer initializer has the codes
    at ``flat`` mirrored around the zero point the graph dequantizes it with."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    zero_point = 0
    for node in model.graph.node:
        ins = list(node.input)
        slot = {"DequantizeLinear": (0, 2), "ConvInteger": (1, 3), "MatMulInteger": (1, 3)}
        slot.update({"QLinearConv": (3, 5), "QLinearMatMul": (3, 5)})
        if node.op_type in slot and initializer in ins:
            codes_at, zp_at = slot[node.op_type]
            if ins.index(initializer) == codes_at and len(ins) > zp_at and ins[zp_at] in inits:
                zps = numpy_helper.to_array(inits[ins[zp_at]]).reshape(-1)
                assert np.all(zps == zps[0]), "per-channel zero points differ"
                zero_point = int(zps[0])
    tensor = inits[initializer]
    codes = negate_codes(numpy_helper.to_array(tensor), flat, zero_point)
    tensor.CopyFrom(numpy_helper.from_array(codes, initializer))
    onnx.save(model, str(dst))
