"""Planters of quantizations, faithful and tampered (int8, GGUF, requantization)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scanner.redteam.io import ModelCopy
from scanner.redteam.plan import Context, NotApplicableError, Plan, Planter, _matrices, _pick

# --------------------------------------------------------- quantization (both sides)


INT8_CLAIM = "quantize:int8:per-channel:symmetric"


def _int8(tamper: bool) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        if copy.format == "onnx":
            return _int8_onnx(copy, ctx, tamper)
        if copy.format != "safetensors":
            raise NotApplicableError(
                "int8 weight layouts are written for safetensors / ONNX; use gguf-q8_0 for GGUF"
            )
        from scanner.redteam.quant import quantize_int8, unfaithful_quantization

        names = _matrices(copy)
        victim = _pick(copy, ctx, names, "flipped codes") if tamper else None
        changed: dict[str, np.ndarray] = {}
        details: dict[str, Any] = {}
        for name in names:
            w = copy.weight(name)
            if name == victim:
                q, idx = unfaithful_quantization(w, ctx.strength)
                details = {
                    "tensor": name,
                    "flipped": int(idx.size),
                    "indices": sorted(int(i) for i in idx[:64]),
                }
            else:
                q = quantize_int8(w)
            changed[name] = q.codes
            changed[name + "_scale"] = q.scale
        return Plan(changed, claim=INT8_CLAIM, details={"quantized": names, **details})

    return run


def _int8_onnx(copy: ModelCopy, ctx: Context, tamper: bool) -> Plan:
    import tempfile

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import quantize_dynamic

    from scanner.redteam.graph import constants_to_initializers
    from scanner.redteam.quant import flip_codes, largest_indices

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in.onnx"), Path(tmp, "out.onnx")
        onnx.save(constants_to_initializers(copy.onnx_model()), str(src))
        quantize_dynamic(str(src), str(dst), per_channel=True)
        model = onnx.load(str(dst))
    details: dict[str, Any] = {}
    if tamper:
        quantized = sorted(
            (
                i
                for i in model.graph.initializer
                if i.name.endswith("_quantized")
                and i.data_type == onnx.TensorProto.INT8
                and int(np.prod(i.dims)) >= 64
            ),
            key=lambda i: (-int(np.prod(i.dims)), i.name),
        )
        if not quantized:
            raise NotApplicableError("onnxruntime produced no int8 weight to tamper with")
        init = quantized[int(ctx.rng().integers(min(4, len(quantized))))]
        codes = numpy_helper.to_array(init)
        idx = largest_indices(codes.astype(np.float32), ctx.strength)
        init.CopyFrom(numpy_helper.from_array(flip_codes(codes, idx), init.name))
        details = {"tensor": init.name, "flipped": int(idx.size)}
    # onnxruntime's dynamic quantizer stores ConvInteger weights per tensor even when
    # asked for per-channel scales, so the honest claim leaves the granularity open.
    return Plan(onnx_model=model, claim="quantize:int8:symmetric", details=details)


def _gguf_quant(qtype: str, tamper: bool = False) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        if copy.format == "gguf":
            return _gguf_tamper(copy, ctx) if tamper else _requantize(copy, qtype)
        if copy.format != "safetensors":
            raise NotApplicableError("GGUF conversion is written from safetensors or GGUF")
        names = [
            n for n in copy.float_names() if copy.shape(n)[-1] % 32 == 0 and len(copy.shape(n)) == 2
        ]
        if not names:
            raise NotApplicableError(f"{copy.path}: no tensor with rows of 32k elements")

        def write(out: Path, marker: str | None) -> Mapping[str, Any]:
            import gguf

            from scanner.redteam.io import MARKER_KEY

            qt = gguf.GGMLQuantizationType[qtype.upper()]
            wr = gguf.GGUFWriter(str(out), "modelseal-redteam")
            if marker is not None:
                wr.add_string(MARKER_KEY, marker)
            for n in copy.float_names():
                w = copy.weight(n)
                if n in names:
                    blocks = gguf.quants.quantize(w, qt)
                    wr.add_tensor(n, blocks, raw_shape=blocks.shape, raw_dtype=qt)
                else:
                    wr.add_tensor(n, w.astype(np.float32))
            wr.write_header_to_file()
            wr.write_kv_data_to_file()
            wr.write_tensors_to_file()
            wr.close()
            return {}

        return Plan(
            writer=write,
            claim=f"gguf:{qtype}",
            suffix=".gguf",
            details={"quantized": names, "type": qtype.upper()},
        )

    return run


def _requantize(copy: ModelCopy, qtype: str) -> Plan:
    names = [n for n in copy.float_names() if copy.shape(n)[-1] % 32 == 0]
    # Re-encoding a whole LLM in numpy is slow; the registry caps it (param-free) at the
    # tensors a re-quantization check needs to see, by default every one.
    changed = {n: copy.weight(n) for n in names}
    return Plan(
        changed,
        claim=f"requantize:{qtype}",
        details={"requantized": names, "type": qtype.upper(), "in_place": True},
    )


def _gguf_tamper(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.quant import largest_indices

    names = _matrices(copy, multiple=32)
    name = _pick(copy, ctx, names, "flipped codes")
    w = copy.weight(name).reshape(-1)
    idx = largest_indices(w, ctx.strength)
    w[idx] = -w[idx]  # re-encoded in the tensor's own block type: the codes flip sign
    return Plan(
        {name: w.reshape(copy.shape(name))}, details={"tensor": name, "flipped": int(idx.size)}
    )
