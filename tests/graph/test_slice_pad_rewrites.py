"""Slice and Pad canonicalization: proven identities removed, chains merged only where the
merge computes the same thing (checked here with onnxruntime), never otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from fixtures import real_model
from fixtures.real_models import SILERO_ONNX
from scanner.cli.main import main
from scanner.graph.canonical import canonicalize
from scanner.graph.diff import diff_graphs
from tests.graph import twins as tw

BIG = np.iinfo(np.int64).max


def _model(
    nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], dims: list | None = None
) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims or [2, 9, 12])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, None, None])],
        [
            numpy_helper.from_array(np.asarray(v, dtype=np.int64 if k[0] != "v" else np.float32), k)
            for k, v in inits.items()
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def _slices(
    chain: list[tuple[list[int], list[int], list[int], list[int]]], dims: list | None = None
) -> onnx.ModelProto:
    nodes, inits, x = [], {}, "x"
    for k, (s, e, a, t) in enumerate(chain):
        names = [f"s{k}", f"e{k}", f"a{k}", f"t{k}"]
        inits.update(zip(names, (s, e, a, t), strict=True))
        out = "y" if k == len(chain) - 1 else f"h{k}"
        nodes.append(helper.make_node("Slice", [x, *names], [out]))
        x = out
    return _model(nodes, inits, dims)


def _pads(chain: list[tuple[list[int], str, float]]) -> onnx.ModelProto:
    nodes, inits, x = [], {}, "x"
    for k, (p, mode, v) in enumerate(chain):
        inits[f"p{k}"], inits[f"v{k}"] = p, np.float32(v)
        out = "y" if k == len(chain) - 1 else f"h{k}"
        nodes.append(helper.make_node("Pad", [x, f"p{k}", f"v{k}"], [out], mode=mode))
        x = out
    return _model(nodes, inits)


def _same_structure(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    gd = diff_graphs(canonicalize(a), canonicalize(b))
    return not gd.regions and not gd.changed


def _same_values(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    x = np.random.default_rng(0).standard_normal((2, 9, 12)).astype(np.float32)
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for m in (a, b)
    ]
    return run[0].shape == run[1].shape and np.array_equal(run[0], run[1])


SLICE_CASES = [
    # (chain, single slice it may equal)
    ([([0], [BIG], [0], [1]), ([1], [7], [1], [1])], ([1], [7], [1], [1])),  # whole-axis no-op
    ([([1], [8], [1], [1]), ([2], [5], [1], [1])], ([3], [6], [1], [1])),  # same axis
    ([([1], [9], [1], [2]), ([1], [BIG], [1], [1])], ([3], [9], [1], [2])),  # steps compose
    ([([0], [6], [2], [1]), ([1], [3], [1], [1])], ([1, 0], [3, 6], [1, 2], [1, 1])),  # axes
]


@pytest.mark.parametrize(("chain", "merged"), SLICE_CASES)
def test_slice_chain_merges_soundly(chain: list, merged: tuple) -> None:
    a, b = _slices(chain), _slices([merged])
    assert _same_values(a, b)
    assert _same_structure(a, b)


def test_different_slices_stay_different() -> None:
    a = _slices([([1], [8], [1], [1]), ([2], [5], [1], [1])])
    for other in (([3], [7], [1], [1]), ([2], [5], [1], [1]), ([3], [6], [2], [1])):
        b = _slices([other])
        assert not _same_values(a, b)
        assert not _same_structure(a, b)
    # negative bounds depend on the axis length: merged only where it is known statically
    chain, single = [([1], [BIG], [1], [1]), ([-4], [BIG], [1], [1])], [([5], [BIG], [1], [1])]
    assert _same_values(_slices(chain), _slices(single))
    assert _same_structure(_slices(chain), _slices(single))
    dynamic = [2, "n", 12]
    assert not _same_structure(_slices(chain, dynamic), _slices(single, dynamic))


def test_pad_chains() -> None:
    p1, p2 = [0, 1, 2, 0, 0, 1], [1, 1, 0, 0, 2, 1]  # some sides padded twice
    total = list(np.add(p1, p2))
    for mode, v in (("constant", 0.0), ("constant", -1.5), ("edge", 0.0)):
        a, b = _pads([(p1, mode, v), (p2, mode, v)]), _pads([(total, mode, v)])
        assert _same_values(a, b) and _same_structure(a, b), mode
    # reflection of a reflection is not one reflection; fills of two values are not one
    for chain in (
        [(p1, "reflect", 0.0), (p2, "reflect", 0.0)],
        [(p1, "constant", 0.0), (p2, "constant", 1.0)],
    ):
        a, b = _pads(chain), _pads([(total, chain[1][1], chain[1][2])])
        assert not _same_values(a, b) and not _same_structure(a, b)
    # a Pad of zeros is the identity
    relu = _model([helper.make_node("Relu", ["x"], ["y"])], {})
    padded = _model(
        [
            helper.make_node("Pad", ["x", "p", "v"], ["h"], mode="reflect"),
            helper.make_node("Relu", ["h"], ["y"]),
        ],
        {"p": [0] * 6, "v": 0.0},
    )
    assert _same_values(padded, relu) and _same_structure(padded, relu)


def test_silero_after_ort_basic_optimization_is_equivalent(tmp_path: Path) -> None:
    trusted = real_model(SILERO_ONNX)
    model = onnx.load(str(trusted))
    opt = tw.ort_optimize(model, "basic")
    # ORT folded the STFT padding computation into one Pad and dropped no-op Slices
    assert len(opt.graph.node) < len(model.graph.node)
    gd = diff_graphs(canonicalize(model), canonicalize(opt))
    assert not gd.regions and not gd.changed and gd.n_matched == gd.n_deployed
    path = tmp_path / "silero-basic.onnx"
    onnx.save(opt, path)
    out = tmp_path / "r.json"
    code = main(["diff", str(trusted), str(path), "--format", "json", "-o", str(out), "-q"])
    findings = json.loads(out.read_text())["findings"]
    assert code == 0, [(f["rule_id"], f["message"]) for f in findings]
    assert not {f["rule_id"] for f in findings} & {"MS209", "MS203", "MS501"}
