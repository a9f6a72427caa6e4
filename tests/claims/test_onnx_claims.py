"""ONNX quantization claims end to end: faithful onnxruntime quantizations pass the
``quantize`` claim and ``modelseal diff``; a twin whose int8 initializer has codes
flipped on the largest weights fails and is localized to the tensor and the elements."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from scanner.api import diff_artifacts
from scanner.cli.main import main
from scanner.findings import Severity
from tests.claims.conftest import FRACTION
from tests.claims.tampering import largest, negate_onnx_codes

TAMPERED = "conv11_se_1_weights"
"""The largest quantized weight of the classifier (50 x 200 x 1 x 1)."""
CLAIMS = {
    "dynamic": "quantize:int8:symmetric",
    "qdq": "quantize:int8:per-channel:symmetric",
    "qoperator": "quantize:int8:per-channel:symmetric",
}
"""onnxruntime's dynamic quantizer writes ConvInteger weights per-tensor even when asked
for per-channel (only MatMulInteger weights get one scale per column), so its claim leaves
the granularity open; the QDQ quantizer honours per-channel for every Conv weight."""


def _float_weight(path: Path, name: str) -> np.ndarray:
    m = onnx.load(str(path))
    return next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == name)


@pytest.mark.parametrize("flavour", sorted(CLAIMS))
def test_tampered_onnx_twin_fails_and_is_localized(
    onnx_quantized: dict[str, Path], work: Path, flavour: str
) -> None:
    src = onnx_quantized["float"]
    w = _float_weight(src, TAMPERED)
    idx = largest(w, FRACTION)
    bad = work / f"cls_{flavour}_tampered.onnx"
    negate_onnx_codes(onnx_quantized[flavour], bad, TAMPERED + "_quantized", idx)
    claim = CLAIMS[flavour]
    result = diff_artifacts(src, bad, options={"claims": [claim]})
    codes = [f for f in result.findings if f.rule_id == "MS402"]
    assert len(codes) == 1, [f.message for f in result.findings if f.rule_id.startswith("MS4")]
    f = codes[0]
    assert f.severity >= Severity.HIGH
    assert f.locations[0].tensor == TAMPERED + "_quantized"
    assert f.evidence["trusted_tensor"] == TAMPERED
    assert f.evidence["stats"]["non_nearest"] == idx.size
    # Every flipped element is named (the count is under the reporting cap) with the
    # code the claim predicts and the one stored.
    expected = {tuple(int(i) for i in t) for t in zip(*np.unravel_index(idx, w.shape), strict=True)}
    assert {tuple(e["index"]) for e in f.evidence["elements"]} == expected
    assert all(e["found"] == -e["expected"] for e in f.evidence["elements"])
    # Rows along the channel axis (output channels, axis 0 for Conv weights).
    assert set(f.locations[0].region.indices) == {i[0] for i in expected}
    assert not any(f.rule_id == "MS401" for f in result.findings)
    # The same pair through the CLI: exit 1 and the finding in the JSON report.
    out = work / f"cls_{flavour}_tampered.json"
    assert (
        main(["diff", str(src), str(bad), "--claim", claim, "--format", "json", "-o", str(out)])
        == 1
    )
    report = json.loads(out.read_text())
    assert any(
        x["rule_id"] == "MS402" and x["locations"][0]["tensor"] == TAMPERED + "_quantized"
        for x in report["findings"]
    )


@pytest.mark.parametrize("flavour", sorted(CLAIMS))
def test_faithful_onnx_quantization_diff_exits_0(
    onnx_quantized: dict[str, Path], work: Path, flavour: str
) -> None:
    src = onnx_quantized["float"]
    claim = CLAIMS[flavour]
    out = work / f"cls_{flavour}_faithful.json"
    code = main(
        [
            "diff",
            str(src),
            str(onnx_quantized[flavour]),
            "--claim",
            claim,
            "--format",
            "json",
            "-o",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    findings = report["findings"]
    # The claim side first, so that a failure names the analyzer responsible.
    assert any(x["rule_id"] == "MS401" for x in findings), "claim not verified"
    assert not [x for x in findings if x["rule_id"] in ("MS402", "MS403", "MS407")]
    blocking = sorted(
        {
            (x["rule_id"], x["severity"])
            for x in findings
            if x["severity"].lower() in ("medium", "high", "critical")
        }
    )
    assert code == 0, f"non-claim findings block the faithful {flavour} quantization: {blocking}"


def _rescaled(model: onnx.ModelProto, node: onnx.NodeProto, index: int, factor: float) -> None:
    """Point input ``index`` of ``node`` at a new initializer: the old scale x ``factor``."""
    old = next(t for t in model.graph.initializer if t.name == node.input[index])
    new = numpy_helper.from_array(
        (numpy_helper.to_array(old) * factor).astype(np.float32), old.name + "_edited"
    )
    model.graph.initializer.append(new)
    node.input[index] = new.name


@pytest.mark.parametrize("flavour", ["qdq", "qoperator"])
def test_rescaled_activation_fails_and_names_the_node(
    onnx_quantized: dict[str, Path], work: Path, flavour: str
) -> None:
    """An activation dequantized at another scale than it was quantized at multiplies it
    by the ratio: weights and codes are untouched, so only the graph can tell."""
    m = onnx.load(str(onnx_quantized[flavour]))
    inits = {t.name for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    if flavour == "qdq":
        # the DequantizeLinear of the 8th quantized activation read by a Conv reads
        # 1.5x its scale
        readers = {i: n for n in m.graph.node for i in n.input}
        edited = [
            n
            for n in m.graph.node
            if n.op_type == "DequantizeLinear"
            and n.input[0] in producer
            and producer[n.input[0]].op_type == "QuantizeLinear"
            and producer[n.input[0]].input[0] not in inits
            and getattr(readers.get(n.output[0]), "op_type", "") == "Conv"
        ][7]
        _rescaled(m, edited, 1, 1.5)
    else:
        # a QLinearConv writes its output at 0.8x the scale its reader assumes
        edited = [n for n in m.graph.node if n.op_type == "QLinearConv"][20]
        _rescaled(m, edited, 6, 0.8)
    bad = work / f"cls_{flavour}_rescaled.onnx"
    onnx.save(m, str(bad))
    out = work / f"cls_{flavour}_rescaled.json"
    claim = CLAIMS[flavour]
    args = ["diff", str(onnx_quantized["float"]), str(bad), "--claim", claim]
    assert main([*args, "--format", "json", "-o", str(out)]) == 1
    findings = json.loads(out.read_text())["findings"]
    # The weights still verify: the claim is not what fails.
    assert any(x["rule_id"] == "MS401" for x in findings)
    graph = [x for x in findings if x["rule_id"] == "MS209" and x["severity"] == "high"]
    assert any(edited.name in {loc.get("node") for loc in x["locations"]} for x in graph), graph


def test_fused_qoperator_with_int32_biases_and_qgemm_passes(
    onnx_quantized: dict[str, Path], work: Path
) -> None:
    src, q = onnx_quantized["fused"], onnx_quantized["fused_qoperator"]
    m = onnx.load(str(q))
    biases = [n.input[8] for n in m.graph.node if n.op_type == "QLinearConv" and len(n.input) > 8]
    assert len(biases) > 40 and any(n.op_type == "QGemm" for n in m.graph.node)
    out = work / "cls_fused_qoperator.json"
    claim = CLAIMS["qoperator"]
    code = main(["diff", str(src), str(q), "--claim", claim, "--format", "json", "-o", str(out)])
    findings = json.loads(out.read_text())["findings"]
    blocking = [
        (x["rule_id"], x["message"][:120])
        for x in findings
        if x["severity"] in ("medium", "high", "critical")
    ]
    assert code == 0, blocking
    verified = next(x for x in findings if x["rule_id"] == "MS401")["evidence"]["per_tensor"]
    # every int32 bias was re-derived at input scale x weight scale, like the weights
    assert {b.removesuffix("_quantized") for b in biases} <= set(verified)
    assert all(v["ok"] for v in verified.values())
    assert {v["dtype"] for k, v in verified.items() if k + "_quantized" in biases} == {"i32"}


def test_fused_qoperator_bias_edit_fails_and_is_localized(
    onnx_quantized: dict[str, Path], work: Path
) -> None:
    """One output channel's int32 bias moved by 5% of the tensor's largest bias: tiny next
    to the layer's weights, and many thousands of bias steps."""
    m = onnx.load(str(onnx_quantized["fused_qoperator"]))
    node = [n for n in m.graph.node if n.op_type == "QLinearConv" and len(n.input) > 8][30]
    bias = next(t for t in m.graph.initializer if t.name == node.input[8])
    codes = numpy_helper.to_array(bias).copy()
    channel = int(np.argsort(np.abs(codes))[len(codes) // 2])
    codes[channel] += max(1, int(0.05 * np.abs(codes).max()))
    bias.CopyFrom(numpy_helper.from_array(codes, bias.name))
    bad = work / "cls_fused_qoperator_bias.onnx"
    onnx.save(m, str(bad))
    result = diff_artifacts(onnx_quantized["fused"], bad, options={"claims": [CLAIMS["qoperator"]]})
    failed = [f for f in result.findings if f.rule_id == "MS402"]
    assert len(failed) == 1, [(f.rule_id, f.message) for f in result.findings]
    assert failed[0].locations[0].tensor == bias.name
    assert failed[0].locations[0].region.indices == (channel,)


def _qoperator_zoo(folder: Path) -> tuple[Path, Path]:
    """A small float model on the classifier's real weights that uses every QOperator
    kind onnxruntime writes for a CNN (QLinearConv, QLinearLeakyRelu, QLinearSigmoid,
    QLinearAveragePool, QLinearConcat, QLinearGlobalAveragePool, QGemm, QLinearSoftmax),
    and its static QOperator quantization."""
    import logging

    from onnx import helper
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from fixtures import real_model

    cls = onnx.load(str(real_model("rapidocr-cls")))
    real = {t.name: numpy_helper.to_array(t) for t in cls.graph.initializer}
    for n in cls.graph.node:
        if n.op_type == "Constant":
            real[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    weights = {
        "w1": real["conv1_weights"],
        "w2": real["conv2_expand_weights"],
        "fc": np.ascontiguousarray(real["fc_0.w_0"][:16]),
        "fb": real["fc_0.b_0"],
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("LeakyRelu", ["c1"], ["a1"], alpha=0.1),
        helper.make_node("Conv", ["a1", "w2"], ["c2"]),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("AveragePool", ["a1"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["s2", "p1"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "zoo",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 48, 192])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    src, out = folder / "zoo.onnx", folder / "zoo_qoperator.onnx"
    onnx.save(model, str(src))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.items = iter(
                [{"x": rng.standard_normal((1, 3, 48, 192)).astype(np.float32)} for _ in range(3)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QOperator,
        per_channel=True,
        weight_type=QuantType.QInt8,
    )
    return src, out


def test_every_qoperator_kind_collapses_and_a_rescaled_one_fails(work: Path) -> None:
    src, quantized = _qoperator_zoo(work)
    m = onnx.load(str(quantized))
    kinds = {n.op_type for n in m.graph.node}
    assert {
        "QLinearConv",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearAveragePool",
        "QLinearConcat",
        "QLinearGlobalAveragePool",
        "QGemm",
        "QLinearSoftmax",
    } <= kinds, kinds
    claim = CLAIMS["qoperator"]
    out = work / "zoo.json"
    code = main(["diff", str(src), str(quantized), "--claim", claim, "-f", "json", "-o", str(out)])
    findings = json.loads(out.read_text())["findings"]
    blocking = [(x["rule_id"], x["message"][:120]) for x in findings if x["severity"] != "info"]
    assert code == 0 and not [b for b in blocking if b[0] != "MS208"], blocking
    # The concatenation written at 1.3x the scale its reader dequantizes with.
    index, concat = next((i, n) for i, n in enumerate(m.graph.node) if n.op_type == "QLinearConcat")
    name = concat.name or f"QLinearConcat_{index}"  # how the reader names an unnamed node
    _rescaled(m, concat, 0, 1.3)
    bad = work / "zoo_rescaled.onnx"
    onnx.save(m, str(bad))
    assert main(["diff", str(src), str(bad), "--claim", claim, "-f", "json", "-o", str(out)]) == 1
    graph = [x for x in json.loads(out.read_text())["findings"] if x["rule_id"] == "MS209"]
    assert any(name in {loc.get("node") for loc in x["locations"]} for x in graph), graph


@pytest.mark.parametrize("flavour", ["fused_qdq", "fused_qoperator", "fused_dynamic"])
def test_optimized_then_quantized_against_the_unoptimized_float(
    onnx_quantized: dict[str, Path], work: Path, flavour: str
) -> None:
    """onnxruntime's pre-processing folds BatchNorm (and per-channel Adds) into the convs
    before quantizing: the codes come from the folded weights, re-derived from the
    trusted graph's own Conv and BatchNorm, under the optimizer's new names."""
    src, quantized = onnx_quantized["float"], onnx_quantized[flavour]
    claim = CLAIMS["dynamic" if flavour == "fused_dynamic" else "qoperator"]
    out = work / f"cls_{flavour}_vs_float.json"
    code = main(["diff", str(src), str(quantized), "--claim", claim, "-f", "json", "-o", str(out)])
    findings = json.loads(out.read_text())["findings"]
    blocking = [
        (x["rule_id"], x["message"][:120])
        for x in findings
        if x["severity"] in ("medium", "high", "critical")
    ]
    assert code == 0 and not blocking, blocking
    verified = next(x for x in findings if x["rule_id"] == "MS401")["evidence"]["per_tensor"]
    folded = {k for k, v in verified.items() if "folded_into_conv" in v}
    assert "conv1_weights" in folded and len(folded) >= 35


def test_optimized_then_quantized_with_an_edited_conv_fails(
    onnx_quantized: dict[str, Path], work: Path
) -> None:
    """Three codes of one folded depthwise conv moved by two steps each."""
    m = onnx.load(str(onnx_quantized["fused_qdq"]))
    codes = next(
        t for t in m.graph.initializer if t.name.endswith("conv5_depthwise_weights_quantized")
    )
    values = numpy_helper.to_array(codes).copy()
    flat = values.reshape(-1)
    picked = np.array([7, 40, 101])
    flat[picked] = np.clip(flat[picked].astype(np.int32) + 2, -127, 127).astype(values.dtype)
    codes.CopyFrom(numpy_helper.from_array(values, codes.name))
    bad = work / "cls_fused_qdq_edited.onnx"
    onnx.save(m, str(bad))
    result = diff_artifacts(onnx_quantized["float"], bad, options={"claims": [CLAIMS["qoperator"]]})
    failed = [f for f in result.findings if f.rule_id == "MS402"]
    assert len(failed) == 1, [(f.rule_id, f.message[:100]) for f in result.findings]
    assert failed[0].locations[0].tensor == codes.name
    rows = {int(i) for i in np.unravel_index(picked, values.shape)[0]}
    assert set(failed[0].locations[0].region.indices) == rows
