"""Plant quantization attacks into real weights
(docs/threats.md#attacks-that-wake-up-on-compression).

* :func:`quantize_int8` -- honest round-to-nearest int8 (symmetric/asymmetric,
  per-tensor/per-channel) as common toolchains write it;
* :func:`flip_codes` / :func:`unfaithful_quantization` -- an otherwise faithful
  quantization with codes changed on the most important (largest |w|) weights;
* :func:`project_into_int8_boxes` / :func:`project_into_q8_0_boxes` /
  :func:`project_into_q4_0_boxes` -- the box-constrained "quantization gap" attack: every
  weight moved inside the interval that rounds to its (possibly malicious) code, kept a
  chosen margin from the bin walls, which is the footprint the gap check looks for.

All functions are pure (arrays in, arrays out) and seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Int8Quant:
    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray


def quantize_int8(
    w: np.ndarray,
    *,
    per_channel: bool = True,
    symmetric: bool = True,
    axis: int = 0,
    unsigned: bool = False,
) -> Int8Quant:
    """Round-to-nearest (half to even) int8/uint8 quantization with stored scales.

    Symmetric: scale = absmax / 127 (int8) and zero point 0 (128 for uint8). Asymmetric:
    scale = (max - min) / 255 over a range that contains 0, zero point = round(qmin -
    min / scale).
    """
    w = np.asarray(w, dtype=np.float32)
    qmin, qmax = (0, 255) if unsigned else (-128, 127)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) if per_channel else w.reshape(1, -1)
    lo = np.minimum(moved.min(axis=1), 0.0)
    hi = np.maximum(moved.max(axis=1), 0.0)
    if symmetric:
        scale = (np.maximum(hi, -lo) / 127.0).astype(np.float32)
        zp = np.full(scale.shape, 128 if unsigned else 0, dtype=np.float32)
    else:
        scale = ((hi - lo) / float(qmax - qmin)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.clip(np.round(qmin - np.where(scale > 0, lo / scale, 0)), qmin, qmax)
        zp = zp.astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    shape = [1] * w.ndim
    if per_channel:
        shape[axis] = -1
    s = scale.reshape(shape) if per_channel else scale.reshape(())
    z = zp.reshape(shape) if per_channel else zp.reshape(())
    codes = np.clip(np.rint(w / s) + z, qmin, qmax).astype(np.uint8 if unsigned else np.int8)
    return Int8Quant(codes, scale, zp.astype(np.uint8 if unsigned else np.int8))


def largest_indices(w: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Flat indices of the ``fraction`` largest-|w| elements (at least one)."""
    k = max(1, round(w.size * fraction))
    flat = np.abs(np.asarray(w, dtype=np.float64)).reshape(-1)
    return np.argpartition(-flat, k - 1)[:k]


def flip_codes(
    codes: np.ndarray, indices: np.ndarray, qmin: int = -128, qmax: int = 127, zero_point: int = 0
) -> np.ndarray:
    """Negate codes around the zero point at ``indices`` (a large weight becomes its
    opposite: the most damaging single-code edit)."""
    out = np.array(codes, copy=True)
    flat = out.reshape(-1)
    v = flat[indices].astype(np.int32)
    flat[indices] = np.clip(2 * zero_point - v, qmin, qmax).astype(out.dtype)
    return out


def unfaithful_quantization(
    w: np.ndarray, fraction: float = 0.003, **kw: object
) -> tuple[Int8Quant, np.ndarray]:
    """An honest int8 quantization of ``w`` with codes flipped on its ``fraction``
    largest-magnitude weights; returns the quantization and the flipped flat indices."""
    q = quantize_int8(w, **kw)  # type: ignore[arg-type]
    idx = largest_indices(w, fraction)
    unsigned = q.codes.dtype == np.uint8
    zp = int(np.asarray(q.zero_point).reshape(-1)[0])
    codes = flip_codes(q.codes, idx, 0 if unsigned else -128, 255 if unsigned else 127, zp)
    return Int8Quant(codes, q.scale, q.zero_point), idx


def _box_project(
    scaled: np.ndarray, margin: float, rng: np.random.Generator, lo: int, hi: int
) -> np.ndarray:
    """Move every value to within ``margin`` (in steps) of a wall of its own bin, keeping
    the code: r = +/-(0.5 - u), u ~ U(0, margin)."""
    code = np.clip(np.rint(scaled), lo, hi)
    side = np.where(rng.random(scaled.shape) < 0.5, -1.0, 1.0)
    depth = rng.random(scaled.shape) * margin
    return code + side * (0.5 - depth)


def project_into_int8_boxes(
    w: np.ndarray, margin: float, seed: int = 0, axis: int = 0
) -> np.ndarray:
    """Box-constrained attack on int8 symmetric per-channel quantization: the result
    quantizes to the same codes as ``w`` but every residual sits within ``margin`` of
    +/-0.5 (the PGD repair leaves weights pressed against the bin walls). The channel
    absmax elements are kept, so the scales do not move."""
    rng = np.random.default_rng(seed)
    w = np.asarray(w, dtype=np.float32)
    moved = np.moveaxis(w, axis, 0)
    s = (np.abs(moved).reshape(moved.shape[0], -1).max(axis=1) / 127.0).astype(np.float32)
    s = np.where(s > 0, s, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
    scaled = moved / s
    proj = _box_project(scaled, margin, rng, -127, 127)
    keep = np.abs(scaled) >= 126.5  # the absmax elements define the scale: leave them
    out = np.where(keep, moved, (proj * s).astype(np.float32))
    return np.moveaxis(out, 0, axis).astype(np.float32)


def _project_blocks(
    w: np.ndarray, margin: float, seed: int, levels: int, offset: float
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.asarray(w, dtype=np.float32).reshape(-1, 32)
    if offset:  # Q4_0: d = max / -8, code = round(x / d) + 8 clipped to [0, 15]
        imax = np.abs(x).argmax(axis=1)
        d = (x[np.arange(len(x)), imax] / -8.0).astype(np.float16).astype(np.float32)
    else:  # Q8_0: d = absmax / 127
        d = (np.abs(x).max(axis=1) / 127.0).astype(np.float16).astype(np.float32)
    d = np.where(d != 0, d, 1.0)[:, None]
    scaled = x / d
    lo, hi = (-8, 7) if offset else (-127, 127)
    proj = _box_project(scaled, margin, rng, lo, hi)
    keep = np.abs(scaled) >= (7.5 if offset else 126.5)
    return np.where(keep, x, proj * d).astype(np.float32).reshape(np.shape(w))


def project_into_q8_0_boxes(w: np.ndarray, margin: float, seed: int = 0) -> np.ndarray:
    """The gap attack against Q8_0 blocks of 32 (last axis a multiple of 32)."""
    return _project_blocks(w, margin, seed, 255, 0.0)


def project_into_q4_0_boxes(w: np.ndarray, margin: float, seed: int = 0) -> np.ndarray:
    """The gap attack against Q4_0 blocks of 32 (last axis a multiple of 32)."""
    return _project_blocks(w, margin, seed, 15, 8.0)


def tamper_onnx_codes(
    src: str | Path, dst: str | Path, initializer: str, indices: np.ndarray
) -> np.ndarray:
    """Write a copy of the quantized ONNX model ``src`` to ``dst`` whose integer
    initializer ``initializer`` has its codes negated around its zero point at the flat
    ``indices``: an unfaithful quantization twin, edited in the ModelProto itself (what an
    attacker who ships the quantized file does). Returns the tampered codes.

    The zero point is the one the graph pairs with the codes (the input after the scale
    for ``DequantizeLinear``, the weight zero point of ``MatMulInteger`` /
    ``ConvInteger``); per-channel zero points must all be equal (symmetric schemes).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    tensor = inits[initializer]
    codes = numpy_helper.to_array(tensor)
    zp_name = None
    for node in model.graph.node:
        ins = list(node.input)
        if initializer not in ins:
            continue
        pos = ins.index(initializer)
        if node.op_type == "DequantizeLinear" and pos == 0 and len(ins) > 2:
            zp_name = ins[2]
        elif node.op_type in ("MatMulInteger", "ConvInteger") and pos == 1 and len(ins) > 3:
            zp_name = ins[3]
    zp = (
        numpy_helper.to_array(inits[zp_name]).reshape(-1)
        if zp_name in inits
        else np.zeros(1, dtype=codes.dtype)
    )
    if np.any(zp != zp[0]):
        raise ValueError(f"{initializer}: zero points differ per channel")
    info = np.iinfo(codes.dtype)
    out = flip_codes(codes, np.asarray(indices), int(info.min), int(info.max), int(zp[0]))
    tensor.CopyFrom(numpy_helper.from_array(out, initializer))
    onnx.save(model, str(dst))
    return out
