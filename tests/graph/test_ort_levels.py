"""Every ONNX fixture, optimized by the installed onnxruntime at each level, is recognized as
the same graph; a twin with one weight row changed after optimization is not.

Levels: ``basic`` (constant folding, Split / Slice merges, redundant nodes), ``extended``
(Conv/Gemm/MatMul fusions, LayerNorm, GELU, QuickGelu, Gather/Slice -> Split ...) and
``layout`` (``ORT_ENABLE_LAYOUT``: the NCHWc blocked layout with reordered filters). The
optimized file is what ``optimized_model_filepath`` writes, as a deployment would ship.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fixtures import real_model, torch_exports
from fixtures.real_models import (
    RAPIDOCR_CLS,
    RAPIDOCR_DET,
    RAPIDOCR_REC,
    SILERO_ONNX,
    SILERO_ONNX_IF,
    SILERO_ONNX_IFLESS,
    TASHKEEL_INT8,
)
from scanner.claims.convert.roles import tensor_roles
from scanner.cli.main import main
from scanner.formats import open_artifact

pytestmark = pytest.mark.long_file(22)

MODELS = [
    SILERO_ONNX,
    SILERO_ONNX_IF,
    SILERO_ONNX_IFLESS,
    RAPIDOCR_CLS,
    RAPIDOCR_DET,
    RAPIDOCR_REC,
    TASHKEEL_INT8,
    "minilm-torch-export",
]
LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "layout": getattr(
        ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT", ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    ),
}
BAD = {"MS501", "MS209", "MS503", "MS510", "MS202", "MS203", "MS201"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ort-sources")
    out = {k: real_model(k) for k in MODELS if not k.startswith("minilm")}
    out["minilm-torch-export"] = torch_exports.export_minilm(folder / "minilm.onnx")
    return out


@pytest.fixture(scope="module")
def optimized(
    sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("ort-optimized")
    out = {}
    for key, src in sources.items():
        for level, value in LEVELS.items():
            dst = folder / f"{key}-{level}.onnx"
            so = ort.SessionOptions()
            so.graph_optimization_level = value
            so.optimized_model_filepath = str(dst)
            so.log_severity_level = 3
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
            out[(key, level)] = dst
    return out


def _diff(trusted: Path, deployed: Path, tmp: Path) -> tuple[int, list[dict]]:
    out = tmp / "r.json"
    code = main(["diff", str(trusted), str(deployed), "--format", "json", "-o", str(out), "-q"])
    return code, json.loads(out.read_text())["findings"]


def _ops(path: Path) -> Counter[str]:
    m = onnx.load(str(path))
    return Counter(f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in m.graph.node)


@pytest.mark.parametrize("level", sorted(LEVELS))
@pytest.mark.parametrize("key", MODELS)
def test_optimized_model_is_recognized(
    key: str,
    level: str,
    sources: dict[str, Path],
    optimized: dict[tuple[str, str], Path],
    tmp_path: Path,
) -> None:
    code, findings = _diff(sources[key], optimized[(key, level)], tmp_path)
    bad = [(f["rule_id"], f["message"][:160]) for f in findings if f["rule_id"] in BAD]
    assert code == 0 and not bad, bad
    if level == "layout" and key.startswith("rapidocr"):
        # the layout level really rewrote these convolutions into the blocked layout
        assert any(op.startswith("com.microsoft.nchwc::") for op in _ops(optimized[(key, level)]))


def _initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    out = list(graph.initializer)
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _initializers(a.g)
    return out


def _derived_weights(model: onnx.ModelProto, source: Path, tmp: Path) -> list[onnx.TensorProto]:
    """Float initializers (subgraphs included) of two or more axes longer than 1 that the
    optimizer wrote (folded, fused, reordered: names the source model does not have) and
    that the graph uses (not in a branch its declared input shapes rule out), largest
    first. Their check is the graph diff's: each is recomputed from the trusted graph."""
    with open_artifact(source) as art:  # initializers and Constant nodes alike
        original = set(art.tensors)
    path = tmp / "optimized.onnx"
    onnx.save(model, str(path))
    with open_artifact(path) as art:
        roles = tensor_roles(art) or {}
    inits = [
        i
        for i in _initializers(model.graph)
        if i.data_type == onnx.TensorProto.FLOAT
        and sum(d > 1 for d in i.dims) >= 2
        and i.name not in original
        and roles.get(i.name) is not None
        and roles[i.name].parameter
    ]
    return sorted(inits, key=lambda i: -int(np.prod(i.dims)))


@pytest.mark.parametrize("level", sorted(LEVELS))
@pytest.mark.parametrize("key", [RAPIDOCR_CLS, RAPIDOCR_DET, RAPIDOCR_REC, SILERO_ONNX])
def test_a_row_changed_after_optimization_fails(
    key: str,
    level: str,
    sources: dict[str, Path],
    optimized: dict[tuple[str, str], Path],
    tmp_path: Path,
) -> None:
    model = onnx.load(str(optimized[(key, level)]))
    weights = _derived_weights(model, sources[key], tmp_path)
    assert weights, "the optimizer wrote no weight of its own"
    target = weights[len(weights) // 3]
    arr = numpy_helper.to_array(target).copy()
    row = arr.shape[0] // 2
    arr[row] = arr[row] * 0.5 + 0.01
    target.CopyFrom(numpy_helper.from_array(arr, target.name))
    bad_path = tmp_path / "tampered.onnx"
    onnx.save(model, str(bad_path))
    code, findings = _diff(sources[key], bad_path, tmp_path)
    assert code == 1
    named = {
        loc.get("tensor")
        for f in findings
        if f["severity"] in ("high", "critical")
        for loc in f["locations"]
    }
    assert target.name in named, [(f["rule_id"], f["message"][:120]) for f in findings]
