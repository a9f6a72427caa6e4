"""Graph backdoors and benign twins on a model exported by torch.onnx itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from scanner.cli.main import main
from scanner.graph.canonical import canonicalize
from scanner.graph.diff import diff_graphs
from tests.graph import backdoors as bd


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_shadowlogic_on_a_torch_export(torch_cnn: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(torch_cnn["model"]))
    assert model.producer_name == "pytorch"
    bad, truth = bd.override_output(model, target=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 192)).astype(np.float32)
    trig = truth.fire(x)
    np.testing.assert_array_equal(_run(bad, x), _run(model, x))
    assert (_run(bad, trig)[:, 1] > 0.99).all()
    assert not (_run(model, trig)[:, 1] > 0.99).all()
    bad_path = tmp_path / "bad.onnx"
    onnx.save(bad, bad_path)
    out = tmp_path / "r.json"
    trusted = str(torch_cnn["model"])
    assert main(["diff", trusted, str(bad_path), "--format", "json", "-o", str(out), "-q"]) == 1
    ms501 = [f for f in json.loads(out.read_text())["findings"] if f["rule_id"] == "MS501"]
    assert len(ms501) == 1
    assert set(ms501[0]["evidence"]["nodes"]) == set(truth.nodes)
    assert ms501[0]["evidence"]["reads_inputs"] == ["x"]
    assert main(["scan", str(bad_path), "--format", "json", "-o", str(out), "-q"]) == 1
    assert main(["scan", trusted, "--format", "json", "-o", str(out), "-q"]) == 0
    # planted into the optimized model, it is still the one injected region
    opt_bad, opt_truth = bd.override_output(onnx.load(str(torch_cnn["extended"])), target=1)
    gd = diff_graphs(canonicalize(model), canonicalize(opt_bad))
    assert [r.kind for r in gd.regions if r.kind != "fusion"] == ["injected"]
    injected = next(r for r in gd.regions if r.kind == "injected")
    assert {n.name for n in injected.nodes} == set(opt_truth.nodes)


def test_ort_optimized_torch_export_is_equivalent(
    torch_cnn: dict[str, Path], tmp_path: Path
) -> None:
    opt = onnx.load(str(torch_cnn["extended"]))
    assert any(n.domain == "com.microsoft" for n in opt.graph.node)  # fusions happened
    out = tmp_path / "r.json"
    code = main(
        [
            "diff",
            str(torch_cnn["model"]),
            str(torch_cnn["extended"]),
            "--format",
            "json",
            "-o",
            str(out),
            "-q",
        ]
    )
    findings = json.loads(out.read_text())["findings"]
    assert code == 0, [(f["rule_id"], f["message"]) for f in findings]
    assert not {f["rule_id"] for f in findings} & {"MS501", "MS209", "MS503"}
