"""ONNX Runtime dynamic quantization: the graph side sees an equivalent structure whose
weights stand for the trusted ones within half a quantization step; whether the weights
were quantized as claimed is the claims analyzer's verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS
from scanner.api import diff_artifacts
from scanner.cli.main import main
from scanner.graph.canonical import canonicalize
from scanner.graph.diff import diff_graphs

# ORT's quantize_dynamic default: int8 weights, one scale per tensor, symmetric.
ORT_DYNAMIC_CLAIM = "quantize:int8:per-tensor:symmetric"


def _tamper_code(src: Path, dst: Path, name: str) -> None:
    """Flip one quantized code of ``name``: a one-weight edit hidden in an int8 tensor."""
    m = onnx.load(str(src))
    init = next(i for i in m.graph.initializer if i.name == name)
    codes = numpy_helper.to_array(init).copy()
    k = int(np.argmax(np.abs(codes.astype(np.int32))))
    codes.flat[k] = np.int8(-int(codes.flat[k]) // 2)
    init.CopyFrom(numpy_helper.from_array(codes, name))
    onnx.save(m, str(dst))


def test_dynamic_quantization_is_an_equivalent_structure(
    cls_model: onnx.ModelProto, cls_twins: dict[str, Path]
) -> None:
    q = onnx.load(str(cls_twins["quantized"]))
    assert any(n.op_type == "ConvInteger" for n in q.graph.node)
    assert any(n.op_type == "MatMulInteger" for n in q.graph.node)
    gd = diff_graphs(canonicalize(cls_model), canonicalize(q))
    assert gd.regions == () and gd.changed == ()
    assert any("collapsed dynamic quantization" in n for n in gd.deployed_notes)
    assert all(c.ok for c in gd.weight_checks)
    quantized = [c for c in gd.weight_checks if c.quantized]
    # 53 ConvInteger + 1 MatMulInteger weights, several of them also BN-folded
    assert len(quantized) >= 54
    assert any(c.derivation == "conv-fold" for c in quantized)
    # the graph side does not vouch for quantized weights: that needs a claim
    assert not any(k.endswith("_quantized") for k in gd.explained)


def test_edited_quantized_code_is_caught(
    cls_model: onnx.ModelProto, cls_twins: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "q-edit.onnx"
    _tamper_code(cls_twins["quantized"], bad, "conv3_expand_weights_quantized")
    gd = diff_graphs(canonicalize(cls_model), canonicalize(onnx.load(str(bad))))
    failed = [c for c in gd.weight_checks if not c.ok]
    assert [c.deployed[0] for c in failed] == ["conv3_expand_weights_quantized"]


def test_quantized_diff_with_claim(cls_twins: dict[str, Path], tmp_path: Path) -> None:
    trusted = real_model(RAPIDOCR_CLS)
    res = diff_artifacts(trusted, cls_twins["quantized"], options={"claims": [ORT_DYNAMIC_CLAIM]})
    rules = {f.rule_id for f in res.findings}
    assert not rules & {"MS209", "MS501", "MS503"}, [f.message for f in res.findings]
    assert "MS401" in rules  # the claim was re-derived on the weights
    out = tmp_path / "q.json"
    code = main(
        [
            "diff",
            str(trusted),
            str(cls_twins["quantized"]),
            "--claim",
            ORT_DYNAMIC_CLAIM,
            "--format",
            "json",
            "-o",
            str(out),
            "-q",
        ]
    )
    report = json.loads(out.read_text())
    assert code == 0, [(f["rule_id"], f["message"]) for f in report["findings"]]
    ms502 = [f for f in report["findings"] if f["rule_id"] == "MS502"]
    assert ms502 and "half a quantization step" in ms502[0]["message"]
    bad = tmp_path / "q-edit.onnx"
    _tamper_code(cls_twins["quantized"], bad, "conv3_expand_weights_quantized")
    code = main(
        [
            "diff",
            str(trusted),
            str(bad),
            "--claim",
            ORT_DYNAMIC_CLAIM,
            "--format",
            "json",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 1
    rules = {f["rule_id"] for f in json.loads(out.read_text())["findings"]}
    assert "MS503" in rules
