"""Deployed files made in the test by the tools users run on the pinned wheels' models:
onnxruntime's optimizer and dynamic quantizer, torch and safetensors casts, llama.cpp's
``llama-quantize``. Each builder takes the session folder and caches its output there."""

from __future__ import annotations

import logging
from pathlib import Path

from fixtures import real_model
from tests.claims.gguf_files import BLOCK, LlamaFiles, copy_with, raise_code, raw_blocks

_LLAMA: dict[Path, LlamaFiles] = {}


def _once(folder: Path, name: str) -> tuple[Path, bool]:
    out = folder / name
    return out, out.is_file()


def ort_optimized(key: str, level: str):
    """The model as onnxruntime's session writes it after graph optimization at
    ``level`` (``basic`` or ``extended``), the file a deployment ships."""

    def build(folder: Path) -> Path:
        import onnxruntime as ort

        out, done = _once(folder, f"{key}-ort-{level}.onnx")
        if not done:
            so = ort.SessionOptions()
            so.graph_optimization_level = {
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            }[level]
            so.optimized_model_filepath = str(out)
            ort.InferenceSession(str(real_model(key)), so, providers=["CPUExecutionProvider"])
        return out

    return build


def ort_dynamic_int8(key: str, *, initializers: bool = True):
    """onnxruntime ``quantize_dynamic`` (int8, per channel). Its quantizer stores int8
    codes only for initializers, so the vendor's Constant nodes are made initializers
    first (``initializers``); without that step it keeps the float weights and quantizes
    them at run time. The trusted side stays the vendor's file."""

    def build(folder: Path) -> Path:
        import onnx
        from onnx import numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tag = "" if initializers else "-runtime-weights"
        out, done = _once(folder, f"{key}-dynamic-int8{tag}.onnx")
        if done:
            return out
        logging.getLogger().setLevel(logging.ERROR)
        if not initializers:
            quantize_dynamic(
                str(real_model(key)), str(out), weight_type=QuantType.QInt8, per_channel=True
            )
            return out
        model = onnx.load(str(real_model(key)))
        keep = []
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                value = numpy_helper.to_array(node.attribute[0].t)
                model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            else:
                keep.append(node)
        del model.graph.node[:]
        model.graph.node.extend(keep)
        src = folder / f"{key}-initializers.onnx"
        onnx.save(model, str(src))
        # onnxruntime logs a preprocessing hint per call; it says nothing about the result.
        logging.getLogger().setLevel(logging.ERROR)
        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=True)
        return out

    return build


def torch_half(key: str):
    """A ``torch.save`` state dict with every float tensor cast by ``Tensor.half()``."""

    def build(folder: Path) -> Path:
        import torch

        out, done = _once(folder, f"{key}-f16.pth")
        if not done:
            sd = torch.load(real_model(key), map_location="cpu")
            torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, out)
        return out

    return build


def safetensors_bf16(key: str):
    """A safetensors file with every float tensor cast to bfloat16 by torch."""

    def build(folder: Path) -> Path:
        import torch
        from safetensors.torch import load_file, save_file

        out, done = _once(folder, f"{key}-bf16.safetensors")
        if not done:
            tensors = load_file(str(real_model(key)))
            save_file(
                {
                    k: v.to(torch.bfloat16) if v.is_floating_point() else v
                    for k, v in tensors.items()
                },
                str(out),
            )
        return out

    return build


def _llama(folder: Path) -> LlamaFiles:
    sub = folder / "llamacpp"
    if sub not in _LLAMA:
        sub.mkdir(exist_ok=True)
        _LLAMA[sub] = LlamaFiles(sub)
    return _LLAMA[sub]


def smollm_f32(folder: Path) -> Path:
    """SmolLM2 135M (first 4 blocks) dequantized from the wheel's Q4_1 GGUF to F32."""
    return _llama(folder).base


def smollm(ftype: str):
    def build(folder: Path) -> Path:
        return _llama(folder).smollm(ftype)

    return build


def gemma_q4_k_m(folder: Path) -> Path:
    return _llama(folder).gemma


def gemma_requantized(ftype: str):
    def build(folder: Path) -> Path:
        return _llama(folder).gemma_requantized(ftype)

    return build


def gguf_square(name: str, row: int, col: int):
    """Raise by one step the codes of a 16 x 16 square of ``name``'s elements (rows
    ``row``.., elements ``col``.. of each row), in its ggml blocks."""

    def tamper(src: Path, dst: Path) -> None:
        blocks, qtype, _ = raw_blocks(src, name)
        per_block, nbytes = BLOCK[qtype]
        for r in range(row, row + 16):
            for e in range(col, col + 16):
                b = e // per_block
                block = blocks[r, b * nbytes : (b + 1) * nbytes]
                if not raise_code(block, qtype, e % per_block, 1):
                    raise_code(block, qtype, e % per_block, -1)  # at the top: one down
        copy_with(src, dst, {name: blocks})

    return tamper


def ggml_type(path: Path, name: str) -> str:
    from scanner.formats import open_artifact

    with open_artifact(path) as art:
        return art.tensors[name].dtype.name
