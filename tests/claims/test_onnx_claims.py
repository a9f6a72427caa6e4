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
from scanner.redteam.quant import largest_indices, tamper_onnx_codes
from tests.claims.conftest import FRACTION

TAMPERED = "conv11_se_1_weights"
"""The largest quantized weight of the classifier (50 x 200 x 1 x 1)."""
CLAIMS = {"dynamic": "quantize:int8:symmetric", "qdq": "quantize:int8:per-channel:symmetric"}
"""onnxruntime's dynamic quantizer writes ConvInteger weights per-tensor even when asked
for per-channel (only MatMulInteger weights get one scale per column), so its claim leaves
the granularity open; the QDQ quantizer honours per-channel for every Conv weight."""


def _float_weight(path: Path, name: str) -> np.ndarray:
    m = onnx.load(str(path))
    return next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == name)


@pytest.mark.parametrize("flavour", ["dynamic", "qdq"])
def test_tampered_onnx_twin_fails_and_is_localized(
    onnx_quantized: dict[str, Path], work: Path, flavour: str
) -> None:
    src = onnx_quantized["float"]
    w = _float_weight(src, TAMPERED)
    idx = largest_indices(w, FRACTION)
    bad = work / f"cls_{flavour}_tampered.onnx"
    tamper_onnx_codes(onnx_quantized[flavour], bad, TAMPERED + "_quantized", idx)
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


@pytest.mark.parametrize("flavour", ["dynamic", "qdq"])
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
