"""Vendor quantization layouts: bitsandbytes files made by bitsandbytes itself, GPTQ/AWQ
packed files from the published packing (and GPTQ's algorithm), weight-only int8 ONNX
dequantized in the graph. Faithful files verify with and without a claim; a twin with
one row or block changed fails and is localized."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from safetensors.numpy import save_file

from scanner.api import diff_artifacts
from scanner.claims import bnb, check_claim, gptq
from tests.claims.gptq_reference import calibration, gptq_quantize

pytestmark = pytest.mark.long_file(15)

LAYERS = ("encoder.layer.0.", "encoder.layer.1.")


def _linears(minilm: dict[str, np.ndarray]) -> list[str]:
    return [
        n
        for n, a in minilm.items()
        if a.ndim == 2 and n.startswith(LAYERS) and n.endswith(".weight")
    ]


def _save(tensors: dict[str, np.ndarray], path: Path) -> Path:
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def _bnb_file(minilm, work: Path, kind: str, tamper: str | None = None) -> Path:
    """MiniLM's first two layers as transformers saves a bitsandbytes model (fp16 weights
    quantized by bitsandbytes' own kernels)."""
    # torch and bitsandbytes take seconds to import: only the tests that use them pay
    import bitsandbytes.functional as bnbf
    import torch

    out = dict(minilm)
    for name in _linears(minilm):
        w = torch.from_numpy(minilm[name]).half()
        prefix = name[: -len("weight")]
        del out[name]
        if kind == "int8":
            cb, scb, _ = bnbf.int8_vectorwise_quant(w)
            codes = cb.numpy().copy()
            if name == tamper:
                codes[5, :16] = np.clip(codes[5, :16].astype(int) + 1, -127, 127)
            out[prefix + "weight"], out[prefix + "SCB"] = codes, scb.numpy()
            out[prefix + "weight_format"] = np.zeros((), np.uint8)
        else:
            q, state = bnbf.quantize_4bit(
                w, blocksize=64, quant_type=kind, compress_statistics=kind == "nf4"
            )
            packed = q.numpy().copy()
            if name == tamper:
                # Row 9's first 32 codes (16 bytes) moved one code up.
                row = 9 * w.shape[1] // 2
                packed[row : row + 16] ^= 0x11
            out[prefix + "weight"] = packed
            for key, value in state.as_dict(packed=True).items():
                out[prefix + "weight." + key] = value.numpy()
    return _save(out, work / f"bnb_{kind}_{tamper is not None}.safetensors")


@pytest.mark.parametrize("kind", ["int8", "nf4", "fp4"])
def test_bitsandbytes_files_verify_and_tampered_twin_is_localized(
    minilm, minilm_path: Path, work: Path, kind: str
) -> None:
    good = _bnb_file(minilm, work, kind)
    claim = {"int8": "int8:bnb", "nf4": "nf4", "fp4": "fp4"}[kind]
    r = check_claim("quantize", claim, minilm_path, good)
    assert r.holds, r.message
    assert len(r.tensors) == len(_linears(minilm))
    # Without a claim: inferred, verified, nothing unexplained in the weights.
    result = diff_artifacts(minilm_path, good)
    assert any(f.rule_id == "MS408" and "break" not in f.message for f in result.findings)
    assert not [f for f in result.findings if f.rule_id in ("MS402", "MS403", "MS201")]
    # A wrong format claim is named.
    wrong = {"int8": "nf4", "nf4": "fp4", "fp4": "int8:bnb"}[kind]
    assert not check_claim("quantize", wrong, minilm_path, good).holds
    target = "encoder.layer.1.attention.self.key.weight"
    bad = _bnb_file(minilm, work, kind, tamper=target)
    r = check_claim("quantize", claim, minilm_path, bad)
    failed = [v for v in r.tensors if not v.ok]
    assert [v.tensor for v in failed] == [target]
    assert set(failed[0].rows) == ({5} if kind == "int8" else {9})


def test_bnb_encoders_match_bitsandbytes_bit_for_bit(minilm) -> None:
    import bitsandbytes.functional as bnbf
    import torch

    w16 = torch.from_numpy(minilm["encoder.layer.0.attention.self.query.weight"]).half()
    for qt in ("nf4", "fp4"):
        for dq in (False, True):
            q, state = bnbf.quantize_4bit(w16, blocksize=64, quant_type=qt, compress_statistics=dq)
            theirs = {k: v.numpy() for k, v in state.as_dict(packed=True).items()}
            mine = bnb.encode_4bit(
                w16.numpy(), qt, 64, dq, nested_map=theirs.get("nested_quant_map")
            )
            assert np.array_equal(mine[""], q.numpy())
            for key, value in theirs.items():
                if "quant_state" in key:
                    assert bnb.parse_state(mine["." + key]) == bnb.parse_state(value)
                elif key == "absmax" and dq:
                    # Double-quantized absmax: bitsandbytes' CPU kernel searches the 256-value
                    # map approximately; a few codes sit one neighbour off, near a wall.
                    off = np.flatnonzero(mine[".absmax"] != value)
                    assert off.size <= value.size // 200
                    assert np.all(np.abs(mine[".absmax"][off].astype(int) - value[off]) == 1)
                else:
                    assert np.array_equal(mine["." + key], value), key
    # The dynamic map differs from bitsandbytes' by at most one float32 ulp.
    assert np.allclose(bnb.dynamic_map(), bnbf.create_dynamic_map(signed=True).numpy(), atol=1e-7)
    cb, scb, _ = bnbf.int8_vectorwise_quant(w16)
    codes, absmax = bnb.encode_int8(w16.numpy())
    assert np.array_equal(absmax, scb.numpy())
    # Codes agree except on exact ties, which torch's kernel may round either way.
    x = w16.numpy().astype(np.float64) * 127.0 / absmax[:, None]
    off = codes != cb.numpy()
    assert np.all(np.abs(np.abs(x[off] - np.floor(x[off])) - 0.5) < 1e-5)


def _packed_file(minilm, work: Path, layout: str, *, algo: str = "rtn", tamper=None) -> Path:
    out = dict(minilm)
    for name in _linears(minilm):
        w = minilm[name].astype(np.float16).astype(np.float32)
        prefix = name[: -len("weight")]
        del out[name]
        if algo == "gptq":
            codes, s, z = gptq_quantize(w, calibration(w.shape[1], seed=len(name)), group=128)
            parts = gptq.encode(w, layout=layout, group=128, codes=codes, scale=s, zero=z)
        else:
            parts = gptq.encode(w, layout=layout, group=128, symmetric=layout == "gptq")
        if name == tamper and tamper is not None:
            codes = (
                gptq.unpack_rows(parts["qweight"], 4)
                if layout == "gptq"
                else gptq.unpack_cols(parts["qweight"], 4, gptq.AWQ_ORDER)
            ).astype(np.int32)
            # Output channel 33: a 16 x 16 block of codes one step up (down at the top).
            blk = codes[40:56, 33:49]
            codes[40:56, 33:49] = np.where(blk < 15, blk + 1, blk - 1)
            parts["qweight"] = (
                gptq.pack_rows(codes.astype(np.uint8), 4)
                if layout == "gptq"
                else gptq.pack_cols(codes.astype(np.uint8), 4, gptq.AWQ_ORDER)
            )
        for key, value in parts.items():
            out[prefix + key] = value
    return _save(out, work / f"{layout}_{algo}_{tamper is not None}.safetensors")


@pytest.mark.parametrize("layout", ["gptq", "awq"])
def test_packed_int4_rtn_verify_inferred_and_tampered_block_localized(
    minilm, minilm_path: Path, work: Path, layout: str
) -> None:
    good = _packed_file(minilm, work, layout)
    r = check_claim("quantize", f"{layout}:bits=4:group=128", minilm_path, good)
    assert r.holds, r.message
    result = diff_artifacts(minilm_path, good)
    assert any(f.rule_id == "MS408" and "break" not in f.message for f in result.findings)
    target = "encoder.layer.0.output.dense.weight"
    bad = _packed_file(minilm, work, layout, tamper=target)
    result = diff_artifacts(minilm_path, bad)
    hits = [f for f in result.findings if f.rule_id == "MS402"]
    assert [f.evidence["trusted_tensor"] for f in hits] == [target]
    assert set(hits[0].locations[0].region.indices) <= set(range(33, 49))
    assert not check_claim("quantize", f"{layout}:group=64", minilm_path, good).holds


def test_gptq_algorithm_needs_its_claim_and_its_texture(
    minilm, minilm_path: Path, work: Path
) -> None:
    good = _packed_file(minilm, work, "gptq", algo="gptq")
    # Not round-to-nearest: without a claim the file is not explained.
    result = diff_artifacts(minilm_path, good)
    assert any(f.rule_id in ("MS402", "MS403") for f in result.findings)
    assert result.classification == "unexplained change"
    r = check_claim("quantize", "gptq:bits=4:group=128", minilm_path, good)
    assert r.holds, [v.message for v in r.tensors if not v.ok][:2]
    assert all(v.stats["non_nearest_fraction"] > 0.1 for v in r.tensors)
    # One output channel's codes all moved a step: within reach of the algorithm code by
    # code, out of line with every other row.
    target = "encoder.layer.1.intermediate.dense.weight"
    out = {}
    from safetensors.numpy import load_file

    out = load_file(str(good))
    prefix = target[: -len("weight")]
    codes = gptq.unpack_rows(out[prefix + "qweight"], 4).astype(np.int32)
    codes[:, 200] = np.where(codes[:, 200] < 15, codes[:, 200] + 1, codes[:, 200] - 1)
    out[prefix + "qweight"] = gptq.pack_rows(codes.astype(np.uint8), 4)
    bad = _save(out, work / "gptq_algo_row.safetensors")
    r = check_claim("quantize", "gptq:bits=4:group=128", minilm_path, bad)
    failed = [v for v in r.tensors if not v.ok]
    assert [v.tensor for v in failed] == [target]
    assert 200 in failed[0].rows


def _weight_only_onnx(folder: Path, w: np.ndarray, *, dequant: str, codes=None) -> Path:
    q, s = codes if codes is not None else bnb.encode_int8(w)
    scale = (s / 127.0).astype(np.float32)
    inits = [numpy_helper.from_array(q, "fc_q")]
    if dequant == "cast-mul":
        inits.append(numpy_helper.from_array(scale.reshape(-1, 1), "fc_scale"))
        nodes = [
            helper.make_node("Cast", ["fc_q"], ["fc_f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", ["fc_f", "fc_scale"], ["fc_w"]),
        ]
    else:
        inits.append(numpy_helper.from_array(scale, "fc_scale"))
        nodes = [helper.make_node("DequantizeLinear", ["fc_q", "fc_scale"], ["fc_w"], axis=0)]
    nodes.append(helper.make_node("Gemm", ["x", "fc_w"], ["y"], transB=1))
    return _graph(folder / f"wo_{dequant}.onnx", nodes, inits, w.shape)


def _graph(path: Path, nodes, inits, shape) -> Path:
    g = helper.make_graph(
        nodes,
        "fc",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, shape[1]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, shape[0]])],
        inits,
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("dequant", ["cast-mul", "dequantize-linear"])
def test_weight_only_int8_onnx_verifies_with_and_without_claim(
    minilm, work: Path, dequant: str
) -> None:
    w = minilm["encoder.layer.2.intermediate.dense.weight"]
    src = _graph(
        work / "wo_float.onnx",
        [helper.make_node("Gemm", ["x", "fc"], ["y"], transB=1)],
        [numpy_helper.from_array(w, "fc")],
        w.shape,
    )
    out = _weight_only_onnx(work, w, dequant=dequant)
    for claim in ("int8:per-channel:symmetric", None):
        r = check_claim("quantize", claim, src, out)
        assert r.tensors and all(v.ok for v in r.tensors), r.message
    result = diff_artifacts(src, out)
    assert any(f.rule_id == "MS408" and "break" not in f.message for f in result.findings)
    q, s = bnb.encode_int8(w)
    q = q.copy()
    q[123, 7:10] = -q[123, 7:10]
    bad = _weight_only_onnx(work, w, dequant=dequant + "-bad", codes=(q, s)) if False else None
    path = work / f"wo_{dequant}_bad.onnx"
    m = onnx.load(str(out))
    for t in m.graph.initializer:
        if t.name == "fc_q":
            t.CopyFrom(numpy_helper.from_array(q, "fc_q"))
    onnx.save(m, str(path))
    assert bad is None
    result = diff_artifacts(src, path)
    hits = [f for f in result.findings if f.rule_id == "MS402"]
    assert len(hits) == 1 and list(hits[0].locations[0].region.indices) == [123]
