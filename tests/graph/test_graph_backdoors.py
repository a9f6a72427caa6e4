"""Graph backdoors planted into a real model (by tests/graph/backdoors.py, not the
red-team planters) are found by diff and scan; twins are not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fixtures import real_model
from fixtures.real_models import RAPIDOCR_CLS, RAPIDOCR_DET, SILERO_ONNX, SILERO_ONNX_IF
from scanner.cli.main import main
from scanner.graph.canonical import canonicalize
from scanner.graph.diff import diff_graphs
from scanner.graph.single import find_footprints
from tests.graph import backdoors as bd

ATTACKS = {
    "shadowlogic": bd.override_output,
    "trojannet": bd.window_mlp,
    "deeppayload": bd.gated_blend,
    "parameter-free": bd.pooled_spike,
}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_backdoor_fires_and_is_found(kind: str, cls_model: onnx.ModelProto) -> None:
    bad, truth = ATTACKS[kind](cls_model)
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 192)).astype(np.float32)
    trig = truth.fire(x)
    clean, on_clean, on_trigger = _run(cls_model, x), _run(bad, x), _run(bad, trig)
    np.testing.assert_allclose(on_clean, clean, rtol=1e-5, atol=1e-6)
    assert on_trigger.argmax() == 0 and on_trigger[0, 0] > 0.99
    assert _run(cls_model, trig)[0, 0] < 0.9  # the clean model does not do that by itself
    gd = diff_graphs(canonicalize(cls_model), canonicalize(bad))
    injected = [r for r in gd.regions if r.kind == "injected"]
    assert len(injected) == 1 and len(gd.regions) == 1
    assert {n.name for n in injected[0].nodes} == set(truth.nodes)
    assert injected[0].reads_inputs == ("x",)
    assert truth.merge_node in injected[0].merge_nodes
    assert find_footprints(canonicalize(bad))


def test_clean_real_models_have_no_footprints() -> None:
    for key in (RAPIDOCR_CLS, RAPIDOCR_DET, SILERO_ONNX, SILERO_ONNX_IF):
        assert find_footprints(canonicalize(onnx.load(str(real_model(key))))) == [], key


@pytest.mark.parametrize("twin", ["basic", "extended", "renamed", "reordered"])
def test_equivalent_twins(
    twin: str, cls_model: onnx.ModelProto, cls_twins: dict[str, Path]
) -> None:
    gd = diff_graphs(canonicalize(cls_model), canonicalize(onnx.load(str(cls_twins[twin]))))
    assert not [r for r in gd.regions if r.kind in ("injected", "unexplained")]
    assert not gd.changed
    assert all(c.ok for c in gd.weight_checks)
    if twin in ("basic", "extended"):  # Conv+BN folds recomputed and compared
        assert sum(1 for c in gd.weight_checks if c.derivation == "conv-fold") >= 35


def test_wrapper_is_benign(cls_model: onnx.ModelProto, cls_twins: dict[str, Path]) -> None:
    gd = diff_graphs(canonicalize(cls_model), canonicalize(onnx.load(str(cls_twins["wrapped"]))))
    assert sorted(r.kind for r in gd.regions) == [
        "post-processing",
        "post-processing",
        "pre-processing",
    ]


def test_tampered_fusion_is_caught(cls_model: onnx.ModelProto, cls_twins: dict[str, Path]) -> None:
    m = onnx.load(str(cls_twins["basic"]))
    w = next(i for i in m.graph.initializer if len(i.dims) == 4 and i.dims[0] >= 8)
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[0] *= 1.5
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    gd = diff_graphs(canonicalize(cls_model), canonicalize(m))
    assert any(not c.ok for c in gd.weight_checks)


def test_cli_diff_and_scan(
    cls_model: onnx.ModelProto, cls_twins: dict[str, Path], tmp_path: Path
) -> None:
    trusted = str(real_model(RAPIDOCR_CLS))
    bad, truth = bd.override_output(cls_model)
    bad_path = tmp_path / "bad.onnx"
    onnx.save(bad, bad_path)
    out = tmp_path / "r.json"
    assert main(["diff", trusted, str(bad_path), "--format", "json", "-o", str(out), "-q"]) == 1
    report = json.loads(out.read_text())
    ms501 = [f for f in report["findings"] if f["rule_id"] == "MS501"]
    assert ms501 and {loc["node"] for loc in ms501[0]["locations"]} == set(truth.nodes)
    for twin in ("basic", "extended", "renamed"):
        code = main(
            ["diff", trusted, str(cls_twins[twin]), "--format", "json", "-o", str(out), "-q"]
        )
        assert code == 0, (twin, json.loads(out.read_text())["findings"])
        rules = {f["rule_id"] for f in json.loads(out.read_text())["findings"]}
        assert not rules & {"MS501", "MS209", "MS503"}
    assert main(["scan", str(bad_path), "--format", "json", "-o", str(out), "-q"]) == 1
    assert main(["scan", trusted, "--format", "json", "-o", str(out), "-q"]) == 0


def test_probe_trigger_vs_equivalent(
    cls_model: onnx.ModelProto, cls_twins: dict[str, Path], tmp_path: Path
) -> None:
    from scanner.graph.probe import probe_models

    trusted = real_model(RAPIDOCR_CLS)
    bad, _ = bd.window_mlp(cls_model)
    res = probe_models(trusted, bad.SerializeToString(), budget_s=10, hints=[bd.TRIGGER])
    assert res.verdict == "trigger" and res.seconds < 12
    res = probe_models(trusted, cls_twins["extended"], budget_s=5)
    assert res.verdict == "equivalent"
