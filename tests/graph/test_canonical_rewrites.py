"""The canonical form's rewrites hold only where they are identities.

Each case pairs two small graphs and checks, with onnxruntime, whether they compute the
same; the canonical forms must agree exactly when they do (and differ when they do not):
a rewrite that merged graphs computing different things would hide a change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from scanner.graph.canonical import canonicalize
from scanner.graph.diff import diff_graphs

SHAPE = [2, 9, 12]


def _model(
    nodes: list[onnx.NodeProto], inits: dict[str, object], out_type: int = 1
) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", out_type, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return m


def _same_values(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    outs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for m in (a, b)
    ]
    return outs[0].shape == outs[1].shape and np.array_equal(outs[0], outs[1])


def _same_structure(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    gd = diff_graphs(canonicalize(a), canonicalize(b))
    return not gd.regions and not gd.changed and all(c.ok for c in gd.weight_checks)


def _i64(*v: int) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


def _split(sizes: tuple[int, ...], take: int) -> onnx.ModelProto:
    outs = [f"s{i}" for i in range(len(sizes))]
    outs[take] = "y"
    return _model([helper.make_node("Split", ["x", "sz"], outs, axis=1)], {"sz": _i64(*sizes)})


def _slice(start: int, end: int, axis: int = 1) -> onnx.ModelProto:
    return _model(
        [helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])],
        {"s": _i64(start), "e": _i64(end), "a": _i64(axis)},
    )


def _chain(
    *ops: tuple[str, list[str], dict[str, object]], inits: dict[str, object]
) -> onnx.ModelProto:
    nodes, x = [], "x"
    for k, (op, extra, attrs) in enumerate(ops):
        out = "y" if k == len(ops) - 1 else f"h{k}"
        nodes.append(helper.make_node(op, [x, *extra], [out], **attrs))
        x = out
    return _model(nodes, inits)


def _gather(index: int) -> onnx.ModelProto:
    return _model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], {"i": np.int64(index)})


def _squeezed_slice(start: int, end: int) -> onnx.ModelProto:
    return _chain(
        ("Slice", ["s", "e", "a"], {}),
        ("Squeeze", ["a"], {}),
        inits={"s": _i64(start), "e": _i64(end), "a": _i64(1)},
    )


def _transpose_then_slice(slice_axis: int) -> onnx.ModelProto:
    return _chain(
        ("Transpose", [], {"perm": [2, 0, 1]}),
        ("Slice", ["s", "e", "a"], {}),
        inits={"s": _i64(1), "e": _i64(4), "a": _i64(slice_axis)},
    )


def _slice_then_transpose(slice_axis: int) -> onnx.ModelProto:
    return _chain(
        ("Slice", ["s", "e", "a"], {}),
        ("Transpose", [], {"perm": [2, 0, 1]}),
        inits={"s": _i64(1), "e": _i64(4), "a": _i64(slice_axis)},
    )


def _mul(value: float) -> onnx.ModelProto:
    return _chain(("Relu", [], {}), ("Mul", ["c"], {}), inits={"c": np.float32(value)})


def _relu() -> onnx.ModelProto:
    return _chain(("Relu", [], {}), inits={})


def _if(cond: bool) -> onnx.ModelProto:
    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", 1, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", 1, None)],
    )
    return _model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        {"cond": np.bool_(cond)},
    )


def _reshape_from_shape() -> onnx.ModelProto:
    # Reshape(x, [dim0, 108]) with dim0 read from x's shape, as exporters write it
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["d0"], axis=0),
        helper.make_node("Unsqueeze", ["d0", "ax"], ["d0v"]),
        helper.make_node("Concat", ["d0v", "rest"], ["target"], axis=0),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "target"], ["y"]),
    ]
    return _model(nodes, {"zero": np.int64(0), "ax": _i64(0), "rest": _i64(108)})


def _reshape_literal(shape: tuple[int, ...]) -> onnx.ModelProto:
    return _chain(("Relu", [], {}), ("Reshape", ["t"], {}), inits={"t": _i64(*shape)})


def _twice_relu_added() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    return _model(nodes, {})


def _relu_doubled() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Add", ["a", "a"], ["y"])]
    return _model(nodes, {})


CASES = {
    # name: (graph a, graph b, they compute the same)
    "split part is a slice": (_split((3, 6), 1), _slice(3, 2**62), True),
    "split part is not another slice": (_split((4, 5), 1), _slice(3, 9), False),
    "first split part": (_split((3, 6), 0), _slice(0, 3), True),
    "gather is a squeezed slice": (_gather(2), _squeezed_slice(2, 3), True),
    "gather of another index": (_gather(2), _squeezed_slice(3, 4), False),
    "negative gather index": (_gather(-1), _squeezed_slice(8, 9), True),
    "transpose moves past a slice": (_transpose_then_slice(0), _slice_then_transpose(2), True),
    "transpose past a slice on another axis": (
        _transpose_then_slice(0),
        _slice_then_transpose(1),
        False,
    ),
    "multiplying by one": (_mul(1.0), _relu(), True),
    "multiplying by almost one": (_mul(1.0001), _relu(), False),
    "constant If is its branch": (_if(True), _relu(), True),
    "constant If, other branch": (_if(False), _relu(), False),
    "reshape dimension from the shape": (_reshape_from_shape(), _reshape_literal((-1, 108)), True),
    "reshape to another shape": (_reshape_from_shape(), _reshape_literal((-1, 54)), False),
    "common subexpression": (_twice_relu_added(), _relu_doubled(), True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_canonical_form_agrees_exactly_when_values_do(name: str) -> None:
    a, b, same = CASES[name]
    assert _same_values(a, b) is same  # the case is what it says
    assert _same_structure(a, b) is same


def test_float_products_with_zero_are_not_folded() -> None:
    """``x * 0`` is not 0 for x = inf or NaN: only integer products fold."""
    times_zero = _chain(("Mul", ["c"], {}), inits={"c": np.float32(0.0)})
    zeros = _chain(("Mul", ["c"], {}), ("Mul", ["c"], {}), inits={"c": np.float32(0.0)})
    g = canonicalize(times_zero)
    assert [n.op for n in g.nodes.values()] == ["Mul"]
    assert not _same_structure(times_zero, zeros)


def test_nchwc_padding_must_not_reach_a_real_channel(tmp_path: Path) -> None:
    """ONNX Runtime's layout level pads channels to its block size and zeroes the filter
    columns of the padding. A filter whose padding column is not zero could let padding
    values into a real channel: the layout is then not undone, and the diff fails."""
    from scanner.cli.main import main

    rng = np.random.default_rng(3)
    inits = {
        "w1": rng.standard_normal((20, 3, 3, 3)).astype(np.float32),
        "b1": rng.standard_normal(20).astype(np.float32),
        "w2": rng.standard_normal((12, 20, 3, 3)).astype(np.float32),
        "b2": rng.standard_normal(12).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("HardSigmoid", ["c1"], ["h1"]),  # padding channels become 0.5
        helper.make_node("Conv", ["h1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", 1, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", 1, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    src, opt = tmp_path / "conv.onnx", tmp_path / "conv-layout.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(opt)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    out = tmp_path / "r.json"
    assert main(["diff", str(src), str(opt), "--format", "json", "-o", str(out), "-q"]) == 0
    model = onnx.load(str(opt))
    second = [
        n for n in model.graph.node if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"
    ][1]
    w = next(i for i in model.graph.initializer if i.name == second.input[1])
    arr = numpy_helper.to_array(w).copy()
    block = {24: 8, 32: 16}[arr.shape[1]]  # 20 channels padded to the block size
    # the stored filter is [O/B][I/B][kh][kw][Bi][Bo]: put a value where input channel 20
    # (the first padding channel) meets output channel 0
    mem = arr.reshape(arr.shape[0] // block, arr.shape[1] // block, 3, 3, block, block)
    mem[0, 20 // block, 1, 1, 20 % block, 0] = 0.5
    w.CopyFrom(numpy_helper.from_array(mem.reshape(arr.shape), w.name))
    bad = tmp_path / "conv-layout-bad.onnx"
    onnx.save(model, str(bad))
    assert main(["diff", str(src), str(bad), "--format", "json", "-o", str(out), "-q"]) == 1


@pytest.mark.parametrize("key", ["minilm-int8-onnx", "rapidocr-rec", "silero-onnx-if"])
def test_weight_data_set_aside_for_inference_changes_nothing(key: str, monkeypatch) -> None:
    """Shape inference runs without the weights' bytes: the canonical form is the one
    inferred with them, and the caller's model is handed back byte for byte."""
    from fixtures import real_model
    from scanner.graph import canonical

    model = onnx.load(str(real_model(key)))
    before = model.SerializeToString()
    lean = canonicalize(model)
    assert model.SerializeToString() == before
    monkeypatch.setattr(canonical, "_SET_ASIDE_BYTES", 1 << 62)
    full = canonicalize(model)
    assert lean.uhash == full.uhash and lean.nhash == full.nhash
    assert lean.shapes == full.shapes and lean.notes == full.notes
